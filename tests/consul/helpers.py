"""Sidecars in Consul mode for tests: quick settings, instances with named apps, steady traffic.

Every sidecar is a real `mesh sidecar --consul URL` process (stopped by PID through the
`procs` fixture); apps are recording upstreams whose answer names the instance.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.processes import MeshProcess, free_port, wait_until
from tests.support.upstream import RecordingUpstream, Reply

#: Quick health reports, a short drain grace, quick recovery: test time, same mechanisms.
SETTINGS: dict[str, Any] = {
    "check_interval": 0.5,
    "drain_grace": 1.0,
    "backoff_max": 0.5,
    "wait": 5,
    "timeout": 2,
}


def consul_config(tmp_path: Path, name: str, **overrides: Any) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"consul": {**SETTINGS, **overrides}}))
    return path


def named_app(name: str) -> RecordingUpstream:
    """An app answering every request with its own name."""
    return RecordingUpstream(lambda request: Reply(body=name.encode()))


@dataclass
class Instance:
    """One instance of a service: its app, and the sidecar in front of it."""

    name: str
    app: RecordingUpstream
    sidecar: MeshProcess
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_instance(
    procs: list[MeshProcess],
    tmp_path: Path,
    consul_url: str,
    service: str,
    name: str,
    *extra: str,
    wait_ready: bool = True,
    **settings: Any,
) -> Instance:
    app = named_app(name)
    port = free_port()
    sidecar = MeshProcess.sidecar(
        tmp_path, "--service", service, "--app-port", str(app.port),
        "--listen", f"127.0.0.1:{port}", "--consul", consul_url,
        "--config", str(consul_config(tmp_path, name, **settings)), *extra,
        name=name, wait_ready=False,
    )  # fmt: skip
    procs.append(sidecar)
    if wait_ready:
        sidecar.wait_ready()
    return Instance(name, app, sidecar, port)


def start_caller(
    procs: list[MeshProcess],
    tmp_path: Path,
    consul_url: str,
    upstream: str,
    *extra: str,
    name: str = "a",
    wait_ready: bool = True,
    **settings: Any,
) -> tuple[MeshProcess, int]:
    """A sidecar for service `a` with a local port for calls to `upstream`."""
    port = free_port()
    sidecar = MeshProcess.sidecar(
        tmp_path, "--service", "a", "--upstream", f"{upstream}={port}",
        "--consul", consul_url, "--config", str(consul_config(tmp_path, name, **settings)),
        *extra, name=name, wait_ready=False,
    )  # fmt: skip
    procs.append(sidecar)
    if wait_ready:
        sidecar.wait_ready()
    return sidecar, port


def endpoints(caller: MeshProcess, service: str) -> list[str]:
    cluster = caller.admin("/clusters").get(service)
    return sorted(e["address"] for e in cluster["endpoints"]) if cluster else []


def wait_endpoints(
    caller: MeshProcess, service: str, expected: list[str], timeout: float = 10.0
) -> float:
    """Poll the caller's /clusters until it lists exactly `expected`; the time it took."""
    started = time.monotonic()
    wait_until(
        lambda: endpoints(caller, service) == sorted(expected),
        timeout,
        f"{caller.name} to see {service} at {sorted(expected)}",
        step=0.02,
    )
    return time.monotonic() - started


@dataclass
class Traffic:
    """Steady requests from a few threads to a local port, every outcome recorded."""

    port: int
    rate: float = 100.0
    threads: int = 2
    answers: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.answers.values()) + len(self.failures)

    def start(self) -> Traffic:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(20)

    def _run(self) -> None:
        interval = self.threads / self.rate
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read().decode(errors="replace")
                if response.status == 200:
                    outcome, failed = body, False
                else:
                    reason = response.getheader("x-mesh-error", "")
                    outcome, failed = f"{response.status} {reason} {body.strip()}", True
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                outcome, failed = f"{type(exc).__name__}: {exc}", True
                conn.close()
            with self._lock:
                if failed:
                    self.failures.append(outcome)
                else:
                    self.answers[outcome] += 1
            # Pacing, not synchronisation: the load is a steady rate.
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        conn.close()
