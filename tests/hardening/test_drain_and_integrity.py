"""Drain and data-integrity cases beyond tests/sidecar/test_drain.py and tests/dataplane/.

RELIABILITY rows 40, 42, 43 and 45, the parts not covered there:

- SIGTERM while a request body is still being uploaded: the upload completes byte-exact,
  the answer carries `Connection: close`, the process exits 0.
- SIGTERM with requests pipelined behind one in progress: the one in progress completes,
  the ones queued behind it are never forwarded (the client may safely retry them), and no
  request reaches the app twice.
- Bodies shaped like smuggling payloads (a whole request inside, `0\\r\\n\\r\\n`, bare CR
  and LF) arrive intact as body bytes and never as a second request.
- A chunked upstream answer to HEAD and a 204 that claims a Content-Length reach the client
  without a body, and the connection stays usable.
- A malformed `traceparent` and a 10 KB `tracestate` do not fail the request.
"""

from __future__ import annotations

import hashlib
import random
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sidecar.helpers import refuses
from tests.support.processes import MeshProcess, free_port, wait_until
from tests.support.rawclient import HttpConnection, chunked
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply, echo_sha256

pytestmark = pytest.mark.timeout(60)


def app_handler(request: RecordedRequest) -> Reply:
    if request.target.startswith("/slow"):
        return Reply(delay=1.0, body=b"slow\n")
    return echo_sha256(request)


@pytest.fixture
def app() -> Iterator[RecordingUpstream]:
    with RecordingUpstream(app_handler) as upstream:
        yield upstream


def inbound(
    tmp_path: Path, procs: list[MeshProcess], app: RecordingUpstream
) -> tuple[MeshProcess, int]:
    port = free_port()
    proc = MeshProcess.sidecar(
        tmp_path, "--service", "app", "--app-port", str(app.port),
        "--listen", f"127.0.0.1:{port}", "--drain-timeout", "10", wait_ready=False,
    )  # fmt: skip
    procs.append(proc)
    proc.wait_ready()
    return proc, port


def test_sigterm_mid_upload_completes_the_upload(
    tmp_path: Path, procs: list[MeshProcess], app: RecordingUpstream
) -> None:
    proc, port = inbound(tmp_path, procs, app)
    pieces = [random.Random(i).randbytes(64 * 1024) for i in range(16)]
    digest = hashlib.sha256(b"".join(pieces)).hexdigest()
    frames = list(chunked(pieces))
    with HttpConnection(port, timeout=10) as conn:
        conn.sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        conn.send(frames[:4])
        wait_until(lambda: proc.admin("/listeners")["inbound"]["active"] == 1, 5, "the upload")
        proc.signal(signal.SIGTERM)
        wait_until(lambda: refuses(port), 3, "the listener to stop accepting")
        conn.send(frames[4:])
        response = conn.read_response("POST")
    assert response.status == 200
    assert response.body.decode().strip() == digest
    assert response.get("connection") == "close"
    assert proc.proc.wait(10) == 0, proc.logs()
    (seen,) = app.requests
    assert seen.body_sha256 == digest


def test_sigterm_with_pipelined_requests_forwards_each_at_most_once(
    tmp_path: Path, procs: list[MeshProcess], app: RecordingUpstream
) -> None:
    proc, port = inbound(tmp_path, procs, app)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET /slow HTTP/1.1\r\nHost: app\r\n\r\n"
            b"POST /queued/1 HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\n\r\nok"
            b"POST /queued/2 HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\n\r\nok"
        )
        wait_until(lambda: len(app.requests) == 1, 5, "the first request to reach the app")
        proc.signal(signal.SIGTERM)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert proc.proc.wait(10) == 0, proc.logs()
    assert received.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nconnection: close\r\n" in received.lower()
    assert received.endswith(b"\r\n\r\nslow\n"), received[-200:]
    # The queued requests were never processed: retrying them cannot duplicate anything.
    assert [r.target for r in app.requests] == ["/slow"]


SMUGGLING_SHAPED = [
    b"0\r\n\r\n",
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n",
    b"\r\n\r\n\n\n\r\r",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n" * 50,
    bytes(range(256)) * 64,
]


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_smuggling_shaped_bodies_arrive_as_bodies(
    tmp_path: Path, procs: list[MeshProcess], app: RecordingUpstream, framing: str
) -> None:
    _, port = inbound(tmp_path, procs, app)
    with HttpConnection(port, timeout=10) as conn:
        for body in SMUGGLING_SHAPED:
            conn.request("POST", "/body", body=body, chunked_body=framing == "chunked")
            response = conn.read_response("POST")
            assert response.status == 200
            assert response.body.decode().strip() == hashlib.sha256(body).hexdigest()
    assert [r.target for r in app.requests] == ["/body"] * len(SMUGGLING_SHAPED)
    assert app.errors == []


def test_bodyless_answers_stay_bodyless(
    tmp_path: Path, procs: list[MeshProcess], app: RecordingUpstream
) -> None:
    def handler(request: RecordedRequest) -> Reply:
        if request.method == "HEAD":  # says chunked, sends nothing (as HEAD requires)
            return Reply(headers=[("Transfer-Encoding", "chunked")], framing="none")
        if request.target == "/no-content":
            return Reply(status=204, headers=[("Content-Length", "5")], framing="none")
        return echo_sha256(request)

    app.handler = handler
    _, port = inbound(tmp_path, procs, app)
    with HttpConnection(port, timeout=10) as conn:
        conn.request("HEAD", "/chunked")
        conn.request("GET", "/no-content")
        conn.request("GET", "/after")
        head = conn.read_response("HEAD")
        empty = conn.read_response("GET")
        after = conn.read_response("GET")
    assert (head.status, head.body_size) == (200, 0)
    assert (empty.status, empty.body_size) == (204, 0)
    assert empty.get("content-length") is None
    assert (after.status, after.get("x-echo-target")) == (200, "/after")


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", "00-zz-not-a-trace-01")],
        [("traceparent", "ff-" + "0" * 32 + "-" + "0" * 16 + "-01")],
        [
            ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
            ("tracestate", "k=" + "v" * 10_000),
        ],
        [
            (
                "traceparent",
                "00-" + "a" * 32 + "-" + "b" * 16 + "-01,00-" + "c" * 32 + "-" + "d" * 16 + "-01",
            )
        ],
    ],
    ids=["garbage", "bad-version", "10kb-tracestate", "two-parents"],
)
def test_bad_trace_context_does_not_fail_the_request(
    tmp_path: Path, procs: list[MeshProcess], app: RecordingUpstream, headers: list[tuple[str, str]]
) -> None:
    _, port = inbound(tmp_path, procs, app)
    started = time.monotonic()
    with HttpConnection(port, timeout=10) as conn:
        for _ in range(3):
            conn.request("POST", "/traced", headers=headers, body=b"payload")
            response = conn.read_response("POST")
            assert response.status == 200
            assert response.body.decode().strip() == hashlib.sha256(b"payload").hexdigest()
    assert time.monotonic() - started < 5
    assert len(app.requests) == 3
