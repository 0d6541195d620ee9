"""Start, kill and restart `tests.support.app_process` apps by PID, and read their logs."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.support.processes import REPO, wait_until


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


class AppProcess:
    """One app on a fixed port; `kill()` is a SIGKILL, `start()` brings it back there."""

    def __init__(self, port: int, log: Path, mode: str, forward: str = "", seed: int = 0) -> None:
        self.port = port
        self.log = log
        self.args = [
            sys.executable, "-m", "tests.support.app_process", "--port", str(port),
            "--log", str(log), "--mode", mode, "--forward", forward, "--seed", str(seed),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.args[-1] = str(int(self.args[-1]) + 1)  # a new seed per life
        self.proc = subprocess.Popen(self.args, cwd=REPO, stderr=subprocess.DEVNULL)
        wait_until(lambda: accepts(self.port), 10, f"the app on port {self.port} to listen")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def received(apps: list[AppProcess], method: str) -> Counter[str]:
    """How often each target arrived with `method`, across all apps and all their lives."""
    counts: Counter[str] = Counter()
    prefix = f"RECV {method} "
    for app in apps:
        counts.update(line[len(prefix) :] for line in app.lines() if line.startswith(prefix))
    return counts
