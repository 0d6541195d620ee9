"""Small helpers shared by the sidecar process tests (config files, sockets, PIDs)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.processes import MESH, REPO

#: The identity the static catalog gives an endpoint listed under `service`.
IDENTITY = "spiffe://mesh.local/ns/default/dc/dc1/svc/{}"


def run_mesh(*args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run `mesh ARGS` to completion and capture its output."""
    return subprocess.run(
        [MESH, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )


def refuses(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing accepts connections on host:port (the connect is refused)."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (None when no such process exists)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it are space-separated.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def children(pid: int) -> list[int]:
    result = subprocess.run(
        ["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=5, check=False
    )
    return [int(line) for line in result.stdout.split()]


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def still_running(pid: int, started: int) -> bool:
    """The process `pid` that started at `started` exists and is not a zombie."""
    if start_time(pid) != started:
        return False  # gone, or the PID now belongs to another process
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


def stop_leftovers(started: dict[int, int]) -> list[int]:
    """SIGTERM, then SIGKILL, whichever of these processes still run; return their PIDs.

    For clean-up after a failure that left a product's children running.
    """
    left = [pid for pid, start in started.items() if still_running(pid, start)]
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(still_running(p, started[p]) for p in left):
        time.sleep(0.05)
    for pid in left:
        if still_running(pid, started[pid]):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    return left
