"""`mesh demo`: the demo mesh as local processes, with traffic and a live view.

Each service runs as `mesh attach ... -- python -m sidecar.demo.app` (its sidecar first,
then the app); discovery is a static catalog of the sidecars' inbound listeners. A load
loop calls the entry service; every second a line per service shows what its sidecar saw.
Ctrl-C (or --duration) stops every process this demo started, by PID, and waits for them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpcore
from anyio.abc import Process

from sidecar.demo.topology import ENTRY, SERVICES
from sidecar.signals import stop_on_signals

log = logging.getLogger("sidecar.demo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    name: str
    app_port: int
    inbound: int
    admin: int
    process: Process | None = None


@dataclass
class Stats:
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def p99_ms(self) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def say(text: str) -> None:
    print(text, flush=True)


async def start_services(workdir: Path, services: list[Running]) -> None:
    """Start every service; `services` grows as they start, so a stop midway finds them."""
    planned = [Running(s.name, free_port(), free_port(), free_port()) for s in SERVICES]
    catalog = {"services": {s.name: [f"127.0.0.1:{s.inbound}"] for s in planned}}
    catalog_path = workdir / "catalog.json"
    catalog_path.write_text(json.dumps(catalog, indent=2))
    mesh = str(Path(sys.executable).with_name("mesh"))
    for spec, run in zip(SERVICES, planned, strict=True):
        env = {**os.environ, "DEMO_SERVICE": run.name, "DEMO_PORT": str(run.app_port),
               "DEMO_CALLS": ",".join(spec.calls)}  # fmt: skip
        command = [
            mesh, "attach", "--service", run.name, "--app-port", str(run.app_port),
            "--listen", f"127.0.0.1:{run.inbound}", "--admin", f"127.0.0.1:{run.admin}",
            "--catalog", str(catalog_path), "--access-log", "--log-level", "warning",
            "--", sys.executable, "-m", "sidecar.demo.app",
        ]  # fmt: skip
        # A local log file opens at once; the child owns it from here on.
        log_file = open(workdir / f"{run.name}.log", "wb")  # noqa: SIM115, ASYNC230
        run.process = await anyio.open_process(
            command, stdin=None, stdout=log_file, stderr=log_file, env=env
        )
        services.append(run)
        say(f"  started {run.name:<10} sidecar :{run.inbound}  app :{run.app_port}  "
            f"admin :{run.admin}  (pid {run.process.pid})")  # fmt: skip


async def wait_ready(services: list[Running], pool: httpcore.AsyncConnectionPool) -> None:
    with anyio.fail_after(30):
        for run in services:
            while True:
                if run.process is not None and run.process.returncode is not None:
                    raise RuntimeError(f"{run.name} exited early ({run.process.returncode})")
                try:
                    resp = await pool.request("GET", f"http://127.0.0.1:{run.admin}/ready")
                    if resp.status == 200:
                        break
                except httpcore.ConnectError:
                    pass
                await anyio.sleep(0.05)
            say(f"  ready    {run.name}")


async def load(
    entry: Running, rps: float, stats: Stats, pool: httpcore.AsyncConnectionPool
) -> None:
    interval = 1.0 / rps
    url = f"http://127.0.0.1:{entry.inbound}/"
    while True:
        started = time.monotonic()
        stats.sent += 1
        try:
            resp = await pool.request("GET", url, extensions={"timeout": {"pool": 5, "read": 15}})
            if resp.status == 200:
                stats.ok += 1
            else:
                reason = dict(resp.headers).get(b"x-mesh-error", b"app").decode()
                stats.errors[f"{resp.status} {reason}"] = (
                    stats.errors.get(f"{resp.status} {reason}", 0) + 1
                )
        except httpcore.TimeoutException:
            stats.errors["timeout"] = stats.errors.get("timeout", 0) + 1
        except httpcore.NetworkError as exc:
            stats.errors[type(exc).__name__] = stats.errors.get(type(exc).__name__, 0) + 1
        stats.latencies.append(time.monotonic() - started)
        await anyio.sleep(max(0.0, interval - (time.monotonic() - started)))


async def live_view(
    services: list[Running], stats: Stats, pool: httpcore.AsyncConnectionPool
) -> None:
    last_sent = 0
    while True:
        await anyio.sleep(1.0)
        rate = stats.sent - last_sent
        last_sent = stats.sent
        errors = sum(stats.errors.values())
        say(f"  load: {rate:>4} req/s  total {stats.sent:>6}  ok {stats.ok:>6}  "
            f"errors {errors:>4}  p99 {stats.p99_ms():7.1f} ms")  # fmt: skip
        stats.latencies = stats.latencies[-5000:]


async def summary(
    services: list[Running], stats: Stats, pool: httpcore.AsyncConnectionPool
) -> None:
    say("\n== summary")
    say(f"  requests sent {stats.sent}, ok {stats.ok}, errors {dict(stats.errors) or 'none'}")
    for run in services:
        try:
            resp = await pool.request("GET", f"http://127.0.0.1:{run.admin}/clusters")
            clusters: dict[str, Any] = json.loads(resp.content)
        except (httpcore.NetworkError, ValueError):
            continue
        for name, cluster in clusters.items():
            for endpoint in cluster["endpoints"]:
                say(f"  {run.name:>10} -> {name:<12} {endpoint['address']:<18} "
                    f"requests {endpoint['requests']}")  # fmt: skip


async def stop_all(services: list[Running]) -> None:
    for run in reversed(services):
        if run.process is not None and run.process.returncode is None:
            run.process.send_signal(signal.SIGTERM)
    with anyio.move_on_after(20):
        for run in services:
            if run.process is not None:
                await run.process.wait()
    for run in services:
        if run.process is not None and run.process.returncode is None:
            run.process.kill()
            await run.process.wait()
    say("  all demo processes stopped")


async def run_demo(duration: float, rps: float) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="mesh-demo-"))
    say(f"== mesh demo: {len(SERVICES)} services, each behind its sidecar (logs in {workdir})")
    services: list[Running] = []
    stats = Stats()
    stop = anyio.Event()
    async with anyio.create_task_group() as outer:
        # Signals first: Ctrl-C or SIGTERM at any moment, start-up included, stops cleanly.
        await outer.start(stop_on_signals, stop.set)
        async with httpcore.AsyncConnectionPool(max_connections=16) as pool:
            try:
                with anyio.CancelScope() as running:
                    outer.start_soon(_cancel_when, stop, running)
                    await start_services(workdir, services)
                    await wait_ready(services, pool)
                    say(f"== sending {rps:g} req/s to {ENTRY}; Ctrl-C to stop\n")
                    entry = next(s for s in services if s.name == ENTRY)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(load, entry, rps, stats, pool)
                        tg.start_soon(live_view, services, stats, pool)
                        with anyio.move_on_after(duration if duration > 0 else None):
                            await stop.wait()
                        tg.cancel_scope.cancel()
                if stats.sent:
                    await summary(services, stats, pool)
            finally:
                with anyio.CancelScope(shield=True):
                    await stop_all(services)
        outer.cancel_scope.cancel()
    return 0 if stats.ok or stop.is_set() else 1


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
