"""A throwaway Consul dev agent for the local demo: free loopback ports, a temp data dir.

`find_consul()` takes a `consul` on PATH, else asks scripts/install-consul.sh (which fetches
Debian's package into the repo's cache); None, with the reason logged, when neither works.
`DevAgent` runs it as a child process and stops it by PID.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import anyio
import httpcore
from anyio.abc import Process

from sidecar.demo.ports import free_port

INSTALL_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-consul.sh"
INSTALL_TIMEOUT = 300.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


async def find_consul() -> tuple[str | None, str]:
    """The path of a runnable consul binary, or None and why not."""
    on_path = shutil.which("consul")
    if on_path:
        return on_path, ""
    if not INSTALL_SCRIPT.exists():
        return None, f"no consul on PATH and no {INSTALL_SCRIPT}"
    try:
        with anyio.fail_after(INSTALL_TIMEOUT):
            done = await anyio.run_process([str(INSTALL_SCRIPT)], check=False)
    except (OSError, TimeoutError) as exc:
        return None, f"{INSTALL_SCRIPT.name} could not run: {exc}"
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = " ".join(done.stderr.decode(errors="replace").strip().splitlines()[-2:])
        return None, f"{INSTALL_SCRIPT.name} failed: {tail}"
    return lines[-1], ""


class DevAgent:
    """`consul agent -dev` on loopback; `start()` returns once it can issue certificates."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.data_dir = Path(tempfile.mkdtemp(prefix="consul-", dir=workdir))
        self.log_path = workdir / "consul.log"
        both = (socket.SOCK_STREAM, socket.SOCK_DGRAM)
        self.http_port = free_port()
        self._ports = {
            "server": free_port(),
            "serf-lan": free_port(both),
            "serf-wan": free_port(both),
        }
        self.process: Process | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        return [
            self.binary, "agent", "-dev", "-node=demo",
            "-client=127.0.0.1", "-bind=127.0.0.1", f"-data-dir={self.data_dir}",
            f"-http-port={self.http_port}", "-https-port=-1", "-dns-port=-1", "-grpc-port=-1",
            *(f"-{name}-port={port}" for name, port in self._ports.items()),
        ]  # fmt: skip

    async def start(self, pool: httpcore.AsyncConnectionPool) -> None:
        # The child keeps its own copy of the log file's descriptor; ours closes at once.
        log_file = open(self.log_path, "wb")  # noqa: SIM115, ASYNC230
        self.process = await anyio.open_process(
            self.command(), stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
        )
        log_file.close()
        with anyio.fail_after(START_TIMEOUT):
            while why := await self._not_ready(pool):
                if self.process.returncode is not None:
                    raise RuntimeError(f"consul exited ({self.process.returncode}): {why}")
                await anyio.sleep(0.05)

    async def get_json(self, pool: httpcore.AsyncConnectionPool, path: str) -> Any:
        response = await pool.request(
            "GET", self.address + path, extensions={"timeout": {"connect": 1, "read": 2}}
        )
        if response.status != 200:
            raise ValueError(f"{path}: HTTP {response.status}")
        return json.loads(response.content)

    async def _not_ready(self, pool: httpcore.AsyncConnectionPool) -> str:
        """Why the agent cannot serve the demo yet; "" once it can."""
        try:
            if not await self.get_json(pool, "/v1/status/leader"):
                return "no leader"
            roots = await self.get_json(pool, "/v1/agent/connect/ca/roots")
            if not any(root.get("Active") for root in roots.get("Roots") or ()):
                return "no active CA root"
        except (httpcore.NetworkError, httpcore.TimeoutException, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return ""

    async def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it has not exited in time; the data dir goes too."""
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)
