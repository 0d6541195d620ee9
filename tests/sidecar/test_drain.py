"""Graceful shutdown of an inbound sidecar on SIGTERM.

In-flight requests finish with their full bodies and `Connection: close`; the listener
stops accepting at once; idle keep-alive connections are closed; the process exits 0 once
the work is done. A request still running at the `--drain-timeout` deadline is cut off and
the process exits on time rather than waiting for it.
"""

from __future__ import annotations

import http.client
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.sidecar.helpers import refuses
from tests.support.processes import MeshProcess, free_port, wait_until
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply

pytestmark = pytest.mark.timeout(40)

SLOW = 2.0
CLIENTS = 20


def body_for(target: str) -> bytes:
    return random.Random(target).randbytes(48 * 1024)


def app_handler(request: RecordedRequest) -> Reply:
    if request.target.startswith("/slow/"):
        delay = float(request.target.split("/")[2])
        return Reply(delay=delay, body=body_for(request.target))
    return Reply(body=b"fast\n")


@dataclass
class Outcome:
    status: int | None = None
    body: bytes = b""
    connection: str | None = None
    error: BaseException | None = None
    done_at: float = 0.0


def call(port: int, target: str, outcome: Outcome, timeout: float = 15.0) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", target, headers={"Host": "web"})
        resp = conn.getresponse()
        outcome.connection = resp.getheader("connection")
        outcome.body = resp.read()
        outcome.status = resp.status
    except (OSError, http.client.HTTPException) as exc:
        outcome.error = exc
    finally:
        outcome.done_at = time.monotonic()
        conn.close()


def start_calls(port: int, targets: list[str]) -> tuple[list[threading.Thread], list[Outcome]]:
    outcomes = [Outcome() for _ in targets]
    threads = [
        threading.Thread(target=call, args=(port, target, outcome), daemon=True)
        for target, outcome in zip(targets, outcomes, strict=True)
    ]
    for thread in threads:
        thread.start()
    return threads, outcomes


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Wait (bounded) for the peer to close: EOF or a reset, not data and not a timeout."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.fixture
def app() -> Iterator[RecordingUpstream]:
    with RecordingUpstream(app_handler) as upstream:
        yield upstream


def start_inbound(
    tmp_path: Path, procs: list[MeshProcess], app: RecordingUpstream, drain_timeout: float
) -> tuple[MeshProcess, int]:
    listen = free_port()
    proc = MeshProcess.sidecar(
        tmp_path, "--service", "web", "--app-port", str(app.port),
        "--listen", f"127.0.0.1:{listen}", "--drain-timeout", str(drain_timeout),
        wait_ready=False,
    )  # fmt: skip
    procs.append(proc)
    proc.wait_ready()
    return proc, listen


def test_sigterm_finishes_in_flight_requests_then_exits(
    tmp_path: Path, procs: list[MeshProcess], app: RecordingUpstream
) -> None:
    drain_timeout = 10.0
    proc, listen = start_inbound(tmp_path, procs, app, drain_timeout)

    # An idle keep-alive client: one quick request, then nothing.
    idle = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
    idle.request("GET", "/fast", headers={"Host": "web"})
    first = idle.getresponse()
    assert (first.status, first.read()) == (200, b"fast\n")
    assert first.getheader("connection") != "close"
    idle_sock = idle.sock
    assert idle_sock is not None

    targets = [f"/slow/{SLOW}/{i}" for i in range(CLIENTS)]
    threads, outcomes = start_calls(listen, targets)
    wait_until(lambda: len(app.requests) == CLIENTS + 1, 10, "every request to reach the app")
    inbound = proc.admin("/listeners")["inbound"]
    assert inbound["active"] == CLIENTS, inbound
    assert inbound["open"] == CLIENTS + 1, inbound

    proc.signal(signal.SIGTERM)
    signalled = time.monotonic()

    # New connections are refused from now on.
    wait_until(lambda: refuses(listen), 2, "the inbound listener to stop accepting")
    assert all(o.status is None and o.error is None for o in outcomes), "finished too early"
    # The idle keep-alive connection is closed by the sidecar (EOF), long before the
    # in-flight requests finish.
    assert closed_by_peer(idle_sock, timeout=5)
    assert time.monotonic() - signalled < SLOW / 2
    idle.close()

    for thread in threads:
        thread.join(SLOW + drain_timeout)
    for target, outcome in zip(targets, outcomes, strict=True):
        assert outcome.error is None, f"{target}: {outcome.error!r}"
        assert outcome.status == 200, target
        assert outcome.body == body_for(target), f"{target}: body differs"
        assert outcome.connection == "close", target
        assert outcome.done_at > signalled, target
    assert refuses(listen)

    code = proc.proc.wait(drain_timeout)
    exited = time.monotonic() - signalled
    assert code == 0, proc.logs()
    assert exited < drain_timeout
    assert "reset" not in proc.logs()


def test_drain_timeout_cuts_off_a_request_that_runs_too_long(
    tmp_path: Path, procs: list[MeshProcess], app: RecordingUpstream
) -> None:
    proc, listen = start_inbound(tmp_path, procs, app, drain_timeout=1)
    threads, outcomes = start_calls(listen, ["/slow/5/late"])
    wait_until(lambda: len(app.requests) == 1, 10, "the request to reach the app")

    proc.signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = proc.proc.wait(1 + 2.5)
    exited = time.monotonic() - signalled
    assert code == 0, proc.logs()
    assert 0.9 <= exited < 1 + 2.0, exited

    threads[0].join(5)
    outcome = outcomes[0]
    assert outcome.status != 200
    assert isinstance(outcome.error, ConnectionError | http.client.HTTPException), outcome
    assert outcome.done_at - signalled < 1 + 2.0
    assert "reset 1 connection(s) still open at the drain deadline" in proc.logs()
    assert refuses(listen)


def test_idle_connection_on_a_quiet_sidecar_does_not_delay_exit(
    tmp_path: Path, procs: list[MeshProcess], app: RecordingUpstream
) -> None:
    proc, listen = start_inbound(tmp_path, procs, app, drain_timeout=10)
    with socket.create_connection(("127.0.0.1", listen), timeout=5) as sock:
        sock.sendall(b"GET /fast HTTP/1.1\r\nHost: web\r\n\r\n")
        wait_until(lambda: len(app.requests) == 1, 5, "the request to reach the app")
        signalled = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.proc.wait(5) == 0, proc.logs()
        assert time.monotonic() - signalled < 2
        # The response was delivered before the connection closed.
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        assert received.startswith(b"HTTP/1.1 200 ")
        assert received.endswith(b"\r\n\r\nfast\n")
