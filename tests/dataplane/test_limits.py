"""Per-connection limits of a listener (RELIABILITY rows 4, 6, 12, 14).

An inbound sidecar runs with short timeouts from its config file (`limits.header_timeout: 1`,
`limits.idle_timeout: 1`, `allow_http10: false`). A slowloris client is answered 408 and
closed at the header timeout, an idle keep-alive is closed quietly at the idle timeout, and
request heads over the default limits (100 headers, 60 KiB) get 431, however the bytes
happen to be split into reads. Heads just inside the limits pass.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.processes import MeshProcess, Sidecars, free_port, write_yaml
from tests.support.rawclient import HttpConnection, RawResult, parse_head, send_raw
from tests.support.upstream import RecordingUpstream

HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.0
# The sidecar checks its timeouts on a sweep every 0.25 s.
SWEEP = 0.25


@dataclass
class Limited:
    sidecar: MeshProcess
    upstream: RecordingUpstream
    port: int


@pytest.fixture(scope="module")
def limited_sidecar(sidecars: Sidecars) -> Iterator[Limited]:
    with RecordingUpstream() as upstream:
        port = free_port()
        config = write_yaml(
            sidecars.log_dir / "limits.yaml",
            {
                "service": "app",
                "app_port": upstream.port,
                "listen": f"127.0.0.1:{port}",
                "limits": {
                    "header_timeout": HEADER_TIMEOUT,
                    "idle_timeout": IDLE_TIMEOUT,
                    "allow_http10": False,
                },
            },
        )
        yield Limited(sidecars.start("--config", str(config), name="limits"), upstream, port)


@pytest.fixture
def limited(limited_sidecar: Limited) -> Iterator[Limited]:
    limited_sidecar.upstream.reset()
    yield limited_sidecar
    assert limited_sidecar.sidecar.proc.poll() is None, limited_sidecar.sidecar.logs()


def trickle(port: int, data: bytes, piece: int, gap: float, limit: float) -> RawResult:
    """Send `data` `piece` bytes at a time, `gap` seconds apart, until the server answers."""
    start = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pos = 0
        while time.monotonic() - start < limit:
            if pos < len(data):
                try:
                    sock.sendall(data[pos : pos + piece])
                except OSError:
                    pos = len(data)
                pos += piece
            readable, _, _ = select.select([sock], [], [], gap if pos < len(data) else limit)
            if readable:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    return RawResult(received, True, True, time.monotonic() - start)
                if not chunk:
                    return RawResult(received, True, False, time.monotonic() - start)
                received += chunk
    return RawResult(received, False, False, time.monotonic() - start)


def test_slowloris_gets_408_at_the_header_timeout(limited: Limited) -> None:
    endless = b"GET / HTTP/1.1\r\nHost: app\r\n" + b"X-Slow: " + b"s" * 10_000
    result = trickle(limited.port, endless, piece=1, gap=0.05, limit=5)
    assert result.closed
    assert HEADER_TIMEOUT * 0.9 <= result.elapsed <= HEADER_TIMEOUT + 2 * SWEEP + 0.5
    head = parse_head(result.data)
    assert (head.status, head.get("x-mesh-error")) == (408, "request-timeout")
    assert limited.upstream.raw_bytes_total() == 0


def test_stalled_partial_head_gets_408(limited: Limited) -> None:
    result = send_raw(limited.port, b"GET / HTTP/1.1\r\nHost: ap", timeout=5)
    assert result.closed
    assert result.elapsed <= HEADER_TIMEOUT + 2 * SWEEP + 0.5
    assert parse_head(result.data).status == 408
    assert limited.upstream.raw_bytes_total() == 0


def test_idle_keep_alive_is_closed_quietly(limited: Limited) -> None:
    with HttpConnection(limited.port, timeout=5) as conn:
        conn.request("GET", "/once")
        assert conn.read_response().status == 200
        start = time.monotonic()
        assert conn.closed_by_peer(5), "the idle connection was never closed"
        elapsed = time.monotonic() - start
    assert IDLE_TIMEOUT * 0.9 <= elapsed <= IDLE_TIMEOUT + 2 * SWEEP + 0.5


def test_silent_connection_is_closed_without_a_response(limited: Limited) -> None:
    result = send_raw(limited.port, b"", timeout=5)
    assert result.closed
    assert result.data == b""
    assert result.elapsed <= max(HEADER_TIMEOUT, IDLE_TIMEOUT) + 2 * SWEEP + 0.5


def test_busy_keep_alive_is_not_closed_as_idle(limited: Limited) -> None:
    """Requests spaced under the idle timeout keep one connection alive past it."""
    with HttpConnection(limited.port, timeout=5) as conn:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < IDLE_TIMEOUT * 2.5:
            conn.request("GET", f"/busy/{n}")
            assert conn.read_response().status == 200
            n += 1
            assert not conn.closed_by_peer(IDLE_TIMEOUT / 4)
    assert len({r.conn_id for r in limited.upstream.requests}) == 1


@pytest.mark.parametrize(
    "keep_alive",
    [b"", b"Connection: keep-alive\r\n", b"Proxy-Connection: keep-alive\r\n"],
    ids=["plain", "connection-keep-alive", "proxy-connection-keep-alive"],
)
def test_http10_refused_when_disabled(limited: Limited, keep_alive: bytes) -> None:
    raw = b"GET / HTTP/1.0\r\nHost: app\r\n" + keep_alive + b"\r\n"
    result = send_raw(limited.port, raw, timeout=3)
    head = parse_head(result.data)
    assert head.status in (400, 426, 505)
    assert head.get("x-mesh-error")
    assert result.closed
    assert limited.upstream.raw_bytes_total() == 0


# -- header count and size (defaults: 100 headers, 60 KiB) -------------------------------------


def head_with(*headers: bytes) -> bytes:
    return b"GET / HTTP/1.1\r\nHost: app\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def many_headers(count: int) -> bytes:
    # Host is one of them.
    return head_with(*[b"X-H%d: %d" % (i, i) for i in range(count - 1)])


def big_header(size: int) -> bytes:
    return head_with(b"X-Big: " + b"b" * size)


def refused_431(result: RawResult, upstream: RecordingUpstream) -> None:
    head = parse_head(result.data)
    assert (head.status, head.get("x-mesh-error")) == (431, "headers-too-large"), result.data[:200]
    assert result.closed
    assert upstream.raw_bytes_total() == 0


def test_101_headers_get_431(limited: Limited) -> None:
    refused_431(send_raw(limited.port, many_headers(101), timeout=3), limited.upstream)


def exchange(port: int, payload: bytes) -> int:
    with HttpConnection(port, timeout=3) as conn:
        conn.send(payload)
        return conn.read_response().status


def test_100_headers_pass(limited: Limited) -> None:
    assert exchange(limited.port, many_headers(100)) == 200
    (seen,) = limited.upstream.requests
    assert seen.header("x-h98") == "98"


def test_70kib_header_gets_431_when_it_arrives_in_pieces(limited: Limited) -> None:
    result = trickle(limited.port, big_header(70 * 1024), piece=8192, gap=0.005, limit=5)
    refused_431(result, limited.upstream)


def test_70kib_header_gets_431_when_it_arrives_at_once(limited: Limited) -> None:
    refused_431(send_raw(limited.port, big_header(70 * 1024), timeout=3), limited.upstream)


def test_61kib_header_gets_431_when_it_arrives_at_once(limited: Limited) -> None:
    refused_431(send_raw(limited.port, big_header(61 * 1024), timeout=3), limited.upstream)


def test_50kib_header_passes(limited: Limited) -> None:
    assert exchange(limited.port, big_header(50 * 1024)) == 200
    (seen,) = limited.upstream.requests
    assert len(seen.header("x-big") or "") == 50 * 1024
