"""A real Consul agent for tests: free loopback ports, a temp data dir, start/stop/restart.

Dev mode (the default) keeps the servers' state in memory, so `restart()` comes back as a new
cluster: new CA and trust domain, no intentions or KV, and indexes that start low again (a real
"index went backwards"). Only the agent's own service and check definitions survive (they are
persisted in the data dir and re-registered). `persistent=True` runs a single bootstrapped
server instead, whose whole state survives `restart()`; it takes ~1.5s to start, not ~0.3s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

_POLL = 0.05
# Loopback only: an http_proxy in the environment must not see these requests.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port(kinds: tuple[int, ...], taken: list[int]) -> int:
    """A loopback port, not in *taken*, free right now for every socket kind in *kinds*."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kinds[0]) as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            if port in taken:
                continue
            try:
                for kind in kinds[1:]:
                    with socket.socket(socket.AF_INET, kind) as other:
                        other.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port found")


class ConsulAgent:
    """One `consul agent` process on loopback.

    Use as a context manager (or call `start()` and `close()`). Ready means: a leader is
    elected, the Connect CA has an active root (leaf certificates can be issued at once), and
    the agent has synced its own node into the catalog. That last write lands a few hundred ms
    after the first two and moves every health/catalog index; waiting for it keeps it from
    waking a test's first blocking query.
    """

    def __init__(
        self,
        binary: str | os.PathLike[str],
        *,
        persistent: bool = False,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.binary = os.fspath(binary)
        self.persistent = persistent
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.node = "test"
        self.data_dir = Path(tempfile.mkdtemp(prefix="consul-test-"))
        self.log_path = self.data_dir / "agent.log"
        # Serf gossips over both TCP and UDP on the same port.
        both = (socket.SOCK_STREAM, socket.SOCK_DGRAM)
        ports: list[int] = []
        for kinds in [(socket.SOCK_STREAM,)] * 2 + [both] * 2:
            ports.append(_free_port(kinds, ports))
        self.http_port, self.server_port, self.serf_lan_port, self.serf_wan_port = ports
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def http_addr(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<ConsulAgent {self.http_addr} {state} data_dir={self.data_dir}>"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        ports = [
            f"-http-port={self.http_port}",
            "-https-port=-1",
            "-dns-port=-1",
            "-grpc-port=-1",
            f"-serf-lan-port={self.serf_lan_port}",
            f"-serf-wan-port={self.serf_wan_port}",
            f"-server-port={self.server_port}",
        ]
        mode = ["-dev"]
        if self.persistent:
            # raft_multiplier 1: elect in 1-2s instead of the production default's 5-10s.
            mode = [
                "-server",
                "-bootstrap-expect=1",
                "-hcl=connect { enabled = true }",
                "-hcl=performance { raft_multiplier = 1 }",
            ]
        return [
            self.binary,
            "agent",
            *mode,
            f"-node={self.node}",
            "-client=127.0.0.1",
            "-bind=127.0.0.1",
            f"-data-dir={self.data_dir / 'data'}",
            "-log-level=debug",
            *ports,
        ]

    def start(self) -> None:
        if self.running:
            return
        with self.log_path.open("ab") as log:
            # Not a new session: Ctrl-C on the test run reaches the agent too.
            self._process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                code = process.returncode if process else None
                raise RuntimeError(f"consul exited with {code} while starting\n{self.log_tail()}")
            try:
                last = self._not_ready()
                if not last:
                    return
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(_POLL)  # a poll interval under the deadline, not a synchronisation sleep
        raise TimeoutError(
            f"consul not ready within {self.start_timeout}s ({last})\n{self.log_tail()}"
        )

    def _not_ready(self) -> str:
        """Why the agent is not ready yet; empty when it is."""
        if not self.get_json("/v1/status/leader"):
            return "no leader"
        roots = self.get_json("/v1/agent/connect/ca/roots")
        if not any(root.get("Active") for root in roots["Roots"] or ()):
            return "no active CA root"
        # The leader registers the node bare; the agent's own sync adds its tagged addresses.
        node = self.get_json(f"/v1/catalog/node/{self.node}")
        if not node or not node["Node"].get("TaggedAddresses"):
            return "node not synced into the catalog"
        return ""

    def get_json(self, path: str, timeout: float = 2.0) -> Any:
        """GET *path* on the agent's HTTP API and decode the JSON body (sync, for setup)."""
        with _OPENER.open(self.http_addr + path, timeout=timeout) as response:
            return json.load(response)

    def stop(self) -> None:
        """SIGTERM the agent by PID, then SIGKILL it if it has not exited in time."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=self.stop_timeout)

    def restart(self) -> None:
        """Stop and start again on the same ports and data dir."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no agent log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
