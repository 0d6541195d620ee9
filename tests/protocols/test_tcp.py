"""Raw TCP through real sidecar pairs, with and without mTLS.

    test --TCP--> client sidecar (upstream `echo`, protocol tcp) --mTLS--> echo sidecar
                                                     (app_protocol tcp) --TCP--> echo server

Checks: large transfers arrive byte-exact both ways, several connections at once, a
server-first protocol (a banner before the client speaks), a half-close carried through a
plaintext pair, a caller the echo sidecar's policy denies is closed with not one byte to
the app, a TCP upstream without endpoints closes the client, and one access-log line per
connection on each side.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.certs import Pki, spiffe_id
from tests.support.processes import MeshProcess, Sidecars, free_port, wait_until, write_yaml

pytestmark = pytest.mark.timeout(60)

IDLE_TIMEOUT = 1.5
BANNER = b"220 echo ready\r\n"


class EchoServer:
    """A threaded TCP echo server; optionally greets first. Counts every byte it receives."""

    def __init__(self, banner: bytes = b"") -> None:
        self.banner = banner
        self.received = 0
        self.connections = 0
        self._lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                if self.banner:
                    conn.sendall(self.banner)
                while data := conn.recv(65536):
                    with self._lock:
                        self.received += len(data)
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)  # the client finished: so do we
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def exchange(port: int, payload: bytes, half_close: bool = False, banner: bytes = b"") -> bytes:
    """Send `payload` while reading the echo; returns what came back (banner included)."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:

        def send() -> None:
            view = memoryview(payload)
            for i in range(0, len(view), 256 * 1024):
                sock.sendall(view[i : i + 256 * 1024])
            if half_close:
                sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            want = len(banner) + len(payload)
            while len(received) < want:
                data = sock.recv(1024 * 1024)
                if not data:
                    break
                received += data
            if half_close:
                # After the echo, the server's own close arrives through the pair.
                assert sock.recv(1) == b""
        finally:
            sender.join(20)
    return bytes(received)


def closed_without_data(port: int, send: bytes = b"hello?") -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(send)
        try:
            return sock.recv(100) == b""
        except ConnectionResetError:
            return True


@dataclass
class Pair:
    echo: EchoServer
    server: MeshProcess
    client: MeshProcess
    port: int
    ghost_port: int = 0
    denied_port: int = 0


def start_pair(
    sidecars: Sidecars,
    tag: str,
    echo: EchoServer,
    pki: Pki | None,
    denied: bool = False,
    client_config: dict[str, Any] | None = None,
) -> Pair:
    inbound, port, ghost = free_port(), free_port(), free_port()
    tls = (lambda service: pki.issue(service).flags()) if pki else (lambda service: [])
    config: dict[str, Any] = {"app_protocol": "tcp", "access_log": True}
    if pki is not None:
        config["authorization"] = {"default": "deny", "allow": ["client"]}
    server = sidecars.start(
        "--service", "echo", "--app-port", str(echo.port), "--listen", f"127.0.0.1:{inbound}",
        "--config", str(write_yaml(sidecars.log_dir / f"{tag}-echo.yaml", config)),
        *tls("echo"), name=f"{tag}-echo",
    )  # fmt: skip
    catalog = write_yaml(
        sidecars.log_dir / f"{tag}-catalog.yaml",
        {"services": {"echo": [f"127.0.0.1:{inbound}"], "ghost": []}},
    )

    def client(name: str, local_port: int, ghost_port: int = 0) -> MeshProcess:
        upstreams = [{"name": "echo", "local_port": local_port, "protocol": "tcp"}]
        if ghost_port:
            upstreams.append({"name": "ghost", "local_port": ghost_port, "protocol": "tcp"})
        data = {"upstreams": upstreams, "access_log": True, "catalog": str(catalog)}
        data.update(client_config or {})
        path = write_yaml(sidecars.log_dir / f"{tag}-{name}.yaml", data)
        return sidecars.start(
            "--service", name, "--config", str(path), *tls(name), name=f"{tag}-{name}"
        )  # fmt: skip

    pair = Pair(echo, server, client("client", port, ghost), port, ghost)
    if denied:
        pair.denied_port = free_port()
        client("stranger", pair.denied_port)
    return pair


@pytest.fixture(scope="module")
def mtls(pki: Pki, sidecars: Sidecars) -> Iterator[Pair]:
    echo = EchoServer()
    try:
        yield start_pair(sidecars, "mtls", echo, pki, denied=True)
    finally:
        echo.close()


@pytest.fixture(scope="module")
def plain(sidecars: Sidecars) -> Iterator[Pair]:
    echo = EchoServer(banner=BANNER)
    try:
        limits = {"tunnel": {"idle_timeout": IDLE_TIMEOUT}, "limits": {"max_connections": 4}}
        yield start_pair(sidecars, "plain", echo, None, client_config=limits)
    finally:
        echo.close()


def test_large_transfer_is_byte_exact_through_an_mtls_pair(mtls: Pair) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    assert exchange(mtls.port, payload) == payload


def test_connections_run_side_by_side(mtls: Pair) -> None:
    payloads = [os.urandom(200_000 + i) for i in range(8)]
    with ThreadPoolExecutor(len(payloads)) as pool:
        echoed = list(pool.map(lambda p: exchange(mtls.port, p), payloads))
    assert echoed == payloads


def test_caller_the_policy_denies_is_closed_before_the_app_is_dialled(mtls: Pair) -> None:
    connections, received = mtls.echo.connections, mtls.echo.received
    assert closed_without_data(mtls.denied_port)
    wait_until(
        lambda: any(
            line.get("mesh_error") == "forbidden" and line.get("caller") == spiffe_id("stranger")
            for line in mtls.server.access_log()
        ),
        5,
        "the denial in the echo sidecar's access log",
    )
    assert (mtls.echo.connections, mtls.echo.received) == (connections, received)
    stats = mtls.server.admin("/listeners")["inbound"]
    assert stats["refused_unauthorized"] >= 1


def test_each_connection_is_one_access_log_line_on_each_side(mtls: Pair) -> None:
    before = {p.name: len(p.access_log()) for p in (mtls.client, mtls.server)}
    assert exchange(mtls.port, b"x" * 12_345) == b"x" * 12_345
    for proc, direction in ((mtls.client, "outbound"), (mtls.server, "inbound")):
        wait_until(lambda p=proc: len(p.access_log()) > before[p.name], 5, "an access log line")
        line = proc.access_log()[before[proc.name]]
        assert (line["protocol"], line["direction"], line["service"]) == ("tcp", direction, "echo")
        assert (line["bytes_in"], line["bytes_out"]) == (12_345, 12_345)
    assert mtls.server.access_log()[before[mtls.server.name]]["caller"] == spiffe_id("client")


def test_upstream_without_endpoints_closes_the_client(mtls: Pair) -> None:
    assert closed_without_data(mtls.ghost_port)
    wait_until(
        lambda: any(line.get("mesh_error") == "no-endpoints" for line in mtls.client.access_log()),
        5,
        "no-endpoints in the access log",
    )


def test_plaintext_pair_carries_a_banner_and_a_half_close(plain: Pair) -> None:
    payload = os.urandom(1024 * 1024)
    assert exchange(plain.port, payload, half_close=True, banner=BANNER) == BANNER + payload


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := sock.recv(size - len(data))):
        data += chunk
    return data


def test_idle_tunnel_is_closed_after_the_idle_timeout(plain: Pair) -> None:
    with socket.create_connection(("127.0.0.1", plain.port), timeout=IDLE_TIMEOUT * 6) as sock:
        assert read_exactly(sock, len(BANNER)) == BANNER
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the sidecar, not by the test's timeout
        waited = time.monotonic() - started
    assert IDLE_TIMEOUT * 0.9 <= waited < IDLE_TIMEOUT * 6
    wait_until(
        lambda: any(
            line.get("mesh_error") == "tunnel-idle-timeout" for line in plain.client.access_log()
        ),
        5,
        "the idle timeout in the access log",
    )


def test_connections_over_the_listener_limit_are_refused(plain: Pair) -> None:
    held = []
    try:
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", plain.port), timeout=10)
            held.append(sock)
            assert read_exactly(sock, len(BANNER)) == BANNER
        assert closed_without_data(plain.port)
        stats = plain.client.admin("/listeners")["upstream:echo"]
        assert stats["refused_over_limit"] >= 1
        assert stats["open"] == 4
    finally:
        for sock in held:
            sock.close()
    # Once they are gone there is room again.
    wait_until(
        lambda: plain.client.admin("/listeners")["upstream:echo"]["open"] == 0, 5, "room again"
    )
    assert exchange(plain.port, b"again", banner=BANNER) == BANNER + b"again"


def peak_rss(proc: MeshProcess) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    with open(f"/proc/{proc.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_client_that_does_not_read_stalls_the_tunnel_in_bounded_memory(mtls: Pair) -> None:
    """End-to-end flow control: the echo fills the client's socket, the tunnel pauses, the
    sender blocks; neither sidecar buffers the transfer."""
    size = 96 * 1024 * 1024  # more than the kernel's socket buffers along the path hold
    payload = os.urandom(size)
    before = {p.name: peak_rss(p) for p in (mtls.client, mtls.server)}
    sent = [0]
    with socket.create_connection(("127.0.0.1", mtls.port), timeout=30) as sock:

        def send() -> None:
            view = memoryview(payload)
            for i in range(0, size, 64 * 1024):
                sock.sendall(view[i : i + 64 * 1024])
                sent[0] = i + 64 * 1024

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        seen: list[int] = []

        def stalled() -> bool:
            seen.append(sent[0])
            return len(seen) > 25 and len(set(seen[-25:])) == 1  # unchanged for ~0.5 s

        wait_until(stalled, 20, "the sender to block")
        assert sent[0] < size, "the tunnel took the transfer without the client reading"
        for proc in (mtls.client, mtls.server):
            assert peak_rss(proc) - before[proc.name] < 24 * 1024 * 1024, proc.name
        received = read_exactly(sock, size)
        sender.join(20)
    assert received == payload
