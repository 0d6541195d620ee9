"""Upstream faults as a client of the sidecar sees them (RELIABILITY rows 30-33, 38).

No endpoints and refused connections fail fast with 503; a slow upstream ends in 504 at the
configured deadline; an upstream that closes before answering gives 502 (and a POST is not
sent twice); an upstream that resets or closes part-way through a body leaves the client
with an aborted response, never one that looks complete.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.dataplane.conftest import MeshPair
from tests.support.processes import (
    BARE_DATA_PATH,
    MeshProcess,
    Sidecars,
    free_port,
    wait_until,
    write_yaml,
)
from tests.support.rawclient import HttpConnection, IncompleteResponse, Response
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply, echo_sha256

REQUEST_TIMEOUT = 0.5


@dataclass
class Faults:
    """One outbound sidecar with a listener per kind of broken service."""

    sidecar: MeshProcess
    upstream: RecordingUpstream
    ports: dict[str, int]


@pytest.fixture(scope="module")
def faults_sidecar(sidecars: Sidecars) -> Iterator[Faults]:
    with RecordingUpstream() as upstream:
        closed_port = free_port()  # nothing listens there: connects are refused
        ports = {name: free_port() for name in ("slow", "empty", "refused")}
        catalog = write_yaml(
            sidecars.log_dir / "faults-catalog.yaml",
            {
                "services": {
                    "slow": [f"127.0.0.1:{upstream.port}"],
                    "empty": [],
                    "refused": [f"127.0.0.1:{closed_port}"],
                }
            },
        )
        config = write_yaml(
            sidecars.log_dir / "faults.yaml",
            {
                "service": "client",
                "catalog": str(catalog),
                "upstreams": [{"name": n, "local_port": p} for n, p in ports.items()],
                "outbound_timeouts": {"connect": 1.0, "request": REQUEST_TIMEOUT},
                **BARE_DATA_PATH,
            },
        )
        sidecar = sidecars.start("--config", str(config), name="faults")
        yield Faults(sidecar, upstream, ports)


@pytest.fixture
def faults(faults_sidecar: Faults) -> Iterator[Faults]:
    faults_sidecar.upstream.reset()
    yield faults_sidecar
    assert faults_sidecar.sidecar.proc.poll() is None, faults_sidecar.sidecar.logs()


def timed_get(
    port: int, target: str = "/", method: str = "GET", body: bytes | None = None
) -> tuple[Response, float]:
    with HttpConnection(port, timeout=10) as conn:
        start = time.monotonic()
        conn.request(method, target, body=body)
        response = conn.read_response(method)
        return response, time.monotonic() - start


def assert_proxy_error(response: Response, status: int, reason: str) -> None:
    assert response.status == status, response.body
    assert response.get("x-mesh-error") == reason
    assert response.body.endswith(b"\n") and response.body.count(b"\n") == 1


def test_no_endpoints_fails_fast_with_503(faults: Faults) -> None:
    response, elapsed = timed_get(faults.ports["empty"])
    assert_proxy_error(response, 503, "no-endpoints")
    assert elapsed < 0.5


def test_refused_connect_fails_fast_with_503(faults: Faults) -> None:
    response, elapsed = timed_get(faults.ports["refused"])
    assert_proxy_error(response, 503, "upstream-connect-failed")
    assert elapsed < 0.9


def test_slow_upstream_gets_504_at_the_deadline(faults: Faults) -> None:
    faults.upstream.handler = lambda req: (
        Reply(body=b"LATE", delay=3.0) if req.target == "/slow" else echo_sha256(req)
    )
    response, elapsed = timed_get(faults.ports["slow"], "/slow")
    assert_proxy_error(response, 504, "upstream-timeout")
    assert REQUEST_TIMEOUT * 0.9 <= elapsed < REQUEST_TIMEOUT + 0.5
    # The late answer can never reach a later request.
    for i in range(3):
        response, _ = timed_get(faults.ports["slow"], f"/fast/{i}")
        assert (response.status, response.get("x-echo-target")) == (200, f"/fast/{i}")
        assert b"LATE" not in response.body


def test_slow_upstream_504_keeps_the_client_connection_usable(faults: Faults) -> None:
    faults.upstream.handler = lambda req: (
        Reply(delay=3.0) if req.target == "/slow" else echo_sha256(req)
    )
    with HttpConnection(faults.ports["slow"], timeout=10) as conn:
        conn.request("GET", "/slow")
        assert conn.read_response().status == 504
        conn.request("GET", "/next")
        response = conn.read_response()
    assert (response.status, response.get("x-echo-target")) == (200, "/next")


# -- through the sidecar pair --------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("how", ["rst", "fin"])
def test_upstream_abort_mid_body_aborts_the_client(mesh: MeshPair, framing: str, how: str) -> None:
    size = 200_000
    mesh.upstream.handler = lambda req: Reply(
        body=[b"a" * 10_000] * 20,
        framing=framing,
        content_length=size,
        abort_after=25_000,
        abort_with=how,
    )
    with HttpConnection(mesh.outbound_port, timeout=10) as conn:
        conn.request("GET", "/cut")
        with pytest.raises(IncompleteResponse) as cut:
            conn.read_response()
        assert conn.closed_by_peer(5)
    assert cut.value.status == 200  # the head had already gone out
    assert cut.value.body_received < size
    assert len(mesh.upstream.requests) == 1, "the request must not be retried"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_upstream_closing_before_a_response_gives_502(mesh: MeshPair, method: str) -> None:
    mesh.upstream.handler = lambda req: Reply(raw=b"", close=True)
    body = b"payload" if method == "POST" else None
    response, _ = timed_get(mesh.outbound_port, "/closes", method, body)
    assert_proxy_error(response, 502, "upstream-reset")
    if method == "POST":
        # It may have been processed: a POST is never sent a second time.
        assert len(mesh.upstream.requests) == 1


def test_upstream_reset_before_a_response_gives_502(mesh: MeshPair) -> None:
    mesh.upstream.handler = lambda req: Reply(raw=b"", reset=True)
    response, _ = timed_get(mesh.outbound_port, "/resets", "POST", b"data")
    assert_proxy_error(response, 502, "upstream-reset")
    assert len(mesh.upstream.requests) == 1


def test_malformed_upstream_response_gives_502(mesh: MeshPair) -> None:
    smuggling_shaped = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    mesh.upstream.handler = lambda req: Reply(raw=smuggling_shaped)
    response, _ = timed_get(mesh.outbound_port, "/malformed")
    assert_proxy_error(response, 502, "upstream-protocol-error")


def test_upstream_failures_leave_the_pair_serving(mesh: MeshPair) -> None:
    def flaky(req: RecordedRequest) -> Reply:
        n = int(req.target.rsplit("/", 1)[1])
        if n % 3 == 0:
            return Reply(raw=b"", close=True)
        if n % 3 == 1:
            return Reply(body=b"b" * 50_000, abort_after=1000)
        return echo_sha256(req)

    mesh.upstream.handler = flaky
    outcomes = []
    for n in range(12):
        with HttpConnection(mesh.outbound_port, timeout=10) as conn:
            conn.request("POST", f"/flaky/{n}", body=b"p")
            try:
                outcomes.append(conn.read_response().status)
            except IncompleteResponse:
                outcomes.append("aborted")
    assert outcomes == [502, "aborted", 200] * 4


def test_interim_responses_are_not_forwarded(mesh: MeshPair) -> None:
    mesh.upstream.handler = lambda req: Reply(
        raw=b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    )
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.request("GET", "/hints")
        response = conn.read_response()
        conn.request("GET", "/hints")
        again = conn.read_response()
    assert (response.status, response.body) == (200, b"ok")
    assert (again.status, again.body) == (200, b"ok")


def test_client_abort_mid_body_drops_the_upstream_request(mesh: MeshPair) -> None:
    with socket.create_connection(("127.0.0.1", mesh.outbound_port), timeout=5) as sock:
        sock.sendall(b"POST /abandoned HTTP/1.1\r\nHost: app\r\nContent-Length: 1000\r\n\r\n")
        sock.sendall(b"0123456789")
        wait_until(
            lambda: b"0123456789" in mesh.upstream.raw_received(), 5, "the partial body upstream"
        )
    (used,) = mesh.upstream.connections_used()
    wait_until(used.closed.is_set, 5, "the proxy to drop the upstream connection")
    assert used.incomplete_request
    assert mesh.upstream.requests == []


def test_client_gone_mid_response_releases_the_upstream(mesh: MeshPair) -> None:
    mesh.upstream.handler = lambda req: Reply(
        body=(b"z" * 65536 for _ in range(4000)), framing="chunked"
    )
    with socket.create_connection(("127.0.0.1", mesh.outbound_port), timeout=5) as sock:
        sock.sendall(b"GET /endless HTTP/1.1\r\nHost: app\r\n\r\n")
        assert sock.recv(1000).startswith(b"HTTP/1.1 200")
    wait_until(
        lambda: all(c.closed.is_set() for c in mesh.upstream.connections_used()),
        10,
        "the upstream connection to be dropped once the client left",
    )
