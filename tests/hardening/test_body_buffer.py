"""The per-connection request-body buffer (`limits.body_buffer_bytes`; RELIABILITY row 15).

An app that accepts a request and never reads its body: the client keeps pushing a 64 MiB
body. The sidecar holds at most `body_buffer_bytes` of it in memory and stops reading from
the client (the rest waits in kernel socket buffers, then the client is blocked), so its
resident memory stays flat with the default buffer and grows by about the configured size
with a large one.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import MeshProcess, free_port, write_yaml

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
BODY = 64 * MiB


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def deaf_app() -> Iterator[int]:
    """Accepts connections and never reads from them."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for sock in accepted:
        sock.close()
    listener.close()


def push_until_blocked(port: int) -> int:
    """Send a 64 MiB body until the sidecar stops taking it for 1 s; bytes sent."""
    sent = 0
    piece = b"x" * (256 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % BODY)
        sock.settimeout(1.0)
        while sent < BODY:
            try:
                sent += sock.send(piece)
            except TimeoutError:
                break
        return sent


def growth(tmp_path: Path, procs: list[MeshProcess], app_port: int, buffer: int | None) -> float:
    port = free_port()
    config: dict[str, object] = {
        "service": "app",
        "app_port": app_port,
        "listen": f"127.0.0.1:{port}",
    }
    if buffer is not None:
        config["limits"] = {"body_buffer_bytes": buffer}
    path = write_yaml(tmp_path / f"buffer-{buffer}.yaml", config)
    proc = MeshProcess.sidecar(tmp_path, "--config", str(path), name=f"buffer-{buffer}")
    procs.append(proc)
    before = rss(proc.proc.pid)
    started = time.monotonic()
    sent = push_until_blocked(port)
    assert sent < BODY, "the sidecar never stopped reading"
    assert time.monotonic() - started < 30
    return (rss(proc.proc.pid) - before) / MiB


def test_body_buffer_bounds_memory_per_connection(
    tmp_path: Path, procs: list[MeshProcess], deaf_app: int
) -> None:
    default = growth(tmp_path, procs, deaf_app, None)
    assert default < 4, f"{default:.1f} MiB buffered with the 256 KiB default"
    large = growth(tmp_path, procs, deaf_app, 24 * MiB)
    assert large > 12, f"only {large:.1f} MiB buffered with a 24 MiB buffer"
