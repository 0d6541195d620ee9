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
- Trailer fields of a chunked response never reach the client as response headers.
- A client that half-closes after its requests gets every answer, then the connection is
  closed at once (not left open until the idle timeout).
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


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RecordingUpstream, int]]:
    """One sidecar for the tests that do not stop it; each test sets the app's handler."""
    with RecordingUpstream(app_handler) as upstream:
        started: list[MeshProcess] = []
        try:
            _, port = inbound(tmp_path_factory.mktemp("shared"), started, upstream)
            yield upstream, port
        finally:
            for proc in started:
                proc.stop()


@pytest.fixture
def served(shared: tuple[RecordingUpstream, int]) -> Iterator[tuple[RecordingUpstream, int]]:
    upstream, _ = shared
    upstream.reset(app_handler)
    yield shared


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
    served: tuple[RecordingUpstream, int], framing: str
) -> None:
    app, port = served
    with HttpConnection(port, timeout=10) as conn:
        for body in SMUGGLING_SHAPED:
            conn.request("POST", "/body", body=body, chunked_body=framing == "chunked")
            response = conn.read_response("POST")
            assert response.status == 200
            assert response.body.decode().strip() == hashlib.sha256(body).hexdigest()
    assert [r.target for r in app.requests] == ["/body"] * len(SMUGGLING_SHAPED)
    assert app.errors == []


def test_bodyless_answers_stay_bodyless(served: tuple[RecordingUpstream, int]) -> None:
    def handler(request: RecordedRequest) -> Reply:
        if request.method == "HEAD":  # says chunked, sends nothing (as HEAD requires)
            return Reply(headers=[("Transfer-Encoding", "chunked")], framing="none")
        if request.target == "/no-content":
            return Reply(status=204, headers=[("Content-Length", "5")], framing="none")
        return echo_sha256(request)

    app, port = served
    app.handler = handler
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


def test_response_trailers_are_not_forwarded_as_headers(
    served: tuple[RecordingUpstream, int],
) -> None:
    app, port = served
    app.handler = lambda _: Reply(
        raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Trailer: t\r\nSet-Cookie: s=1\r\n\r\n"
    )
    with HttpConnection(port, timeout=10) as conn:
        for _ in range(2):  # one read or two, the trailer stays out of the head
            conn.request("GET", "/trailers")
            response = conn.read_response()
            assert (response.status, response.body) == (200, b"hello")
            assert response.get("x-trailer") is None
            assert response.get("set-cookie") is None


def test_half_closed_client_gets_its_answers_then_the_connection_closes(
    served: tuple[RecordingUpstream, int],
) -> None:
    app, port = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET /slow HTTP/1.1\r\nHost: app\r\n\r\nGET /next HTTP/1.1\r\nHost: app\r\n\r\n"
        )
        sock.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        received = b""
        while chunk := sock.recv(65536):  # ends when the sidecar closes (idle timeout: 60 s)
            received += chunk
    assert received.count(b"HTTP/1.1 200 ") == 2, received[:500]
    assert time.monotonic() - started < 5
    assert [r.target for r in app.requests] == ["/slow", "/next"]


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
    served: tuple[RecordingUpstream, int], headers: list[tuple[str, str]]
) -> None:
    app, port = served
    started = time.monotonic()
    with HttpConnection(port, timeout=10) as conn:
        for _ in range(3):
            conn.request("POST", "/traced", headers=headers, body=b"payload")
            response = conn.read_response("POST")
            assert response.status == 200
            assert response.body.decode().strip() == hashlib.sha256(b"payload").hexdigest()
    assert time.monotonic() - started < 5
    assert len(app.requests) == 3
