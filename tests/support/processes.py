"""Start and stop real `mesh` processes for tests; wait on observable state, never on sleeps."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MESH = str(Path(sys.executable).with_name("mesh"))

#: Config for tests of the bare data path: one attempt per request, no endpoint breakers,
#: so each request shows the data path's own answer to the fault it met.
BARE_DATA_PATH: dict[str, Any] = {
    "resilience": {"retry": {"max_retries": 0}, "outlier": {"enabled": False}}
}


_handed_out: set[int] = set()


def free_port() -> int:
    """A free port never handed out before in this test run: the kernel may offer a port
    again once its probe socket closes, before the process it was meant for binds it."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.02
) -> None:
    """Poll `predicate` until true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def admin_json(port: int, path: str) -> Any:
    _, _, body = http_get(f"http://127.0.0.1:{port}{path}")
    return json.loads(body)


class MeshProcess:
    """A `mesh sidecar` (or other `mesh` subcommand) child process, stopped by its PID."""

    def __init__(
        self,
        args: Sequence[str],
        log_dir: Path,
        name: str = "sidecar",
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = list(args)
        self.name = name
        self.stdout_path = log_dir / f"{name}.out"
        self.stderr_path = log_dir / f"{name}.err"
        self.admin_port: int | None = None
        if "--admin" in self.args:
            self.admin_port = int(self.args[self.args.index("--admin") + 1].rsplit(":", 1)[1])
        full_env = {**os.environ, **(env or {})}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([MESH, *self.args], stdout=out, stderr=err, env=full_env)

    @classmethod
    def sidecar(
        cls,
        log_dir: Path,
        *args: str,
        name: str = "sidecar",
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
    ) -> MeshProcess:
        admin = free_port()
        proc = cls(["sidecar", "--admin", f"127.0.0.1:{admin}", *args], log_dir, name, env)
        if wait_ready:
            proc.wait_ready()
        return proc

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"{self.name} exited early ({self.proc.returncode}):\n{self.logs()}"
            )
        try:
            status, _, _ = http_get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1)
        except OSError:
            return False
        return status == 200

    def wait_ready(self, timeout: float = 15.0) -> None:
        wait_until(self.ready, timeout, f"{self.name} to become ready")

    def admin(self, path: str) -> Any:
        assert self.admin_port is not None
        return admin_json(self.admin_port, path)

    def logs(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def access_log(self) -> list[dict[str, Any]]:
        lines = self.stdout_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait; SIGKILL by PID if it does not exit in time."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"{self.name} did not exit within {timeout}s") from None


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


class Sidecars:
    """Sidecar processes owned by one module; killed by PID when the module ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[MeshProcess] = []

    def start(self, *args: str, name: str, wait_ready: bool = True) -> MeshProcess:
        proc = MeshProcess.sidecar(self.log_dir, *args, name=name, wait_ready=False)
        self.started.append(proc)
        if wait_ready:
            proc.wait_ready()
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.proc.poll() is None:
                proc.proc.kill()
                proc.proc.wait(5)
