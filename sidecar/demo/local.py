"""`mesh demo`: the demo mesh as local processes, with traffic and a live view.

Each service runs as `mesh attach ... -- python -m sidecar.demo.app` (its sidecar first,
then the app); outside traffic enters through `mesh gateway`, the mesh's ingress gateway.
Discovery is a static catalog of the sidecars' inbound listeners, or, with `--discovery
consul` (or `auto` when scripts/install-consul.sh can provide an agent), a Consul dev agent
the demo starts on free loopback ports: every sidecar registers its service there and finds
its peers through it. A load loop calls the gateway; every second a line shows what it saw.
Ctrl-C (or --duration) stops every process this demo started, by PID, and waits for them;
the sidecars deregister before the agent stops.
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

from sidecar.demo.consul_agent import DevAgent, find_consul
from sidecar.demo.topology import ENTRY, GATEWAY, GATEWAY_ROUTES, SERVICES
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


#: Sidecar settings for the demo's Consul mode: quick health reports and a short drain.
CONSUL_SETTINGS = {"consul": {"check_interval": 0.5, "drain_grace": 1.0}}


def discovery_flags(workdir: Path, planned: list[Running], agent: DevAgent | None) -> list[str]:
    """How every sidecar finds its peers: through the agent, or a static catalog."""
    if agent is not None:
        config_path = workdir / "sidecar.json"
        config_path.write_text(json.dumps(CONSUL_SETTINGS, indent=2))
        # The demo's apps call only mesh services: anything else is refused at once.
        return ["--consul", agent.address, "--config", str(config_path), "--passthrough", "deny"]
    catalog = {"services": {s.name: [f"127.0.0.1:{s.inbound}"] for s in planned}}
    catalog_path = workdir / "catalog.json"
    catalog_path.write_text(json.dumps(catalog, indent=2))
    return ["--catalog", str(catalog_path)]


async def start_services(
    workdir: Path, services: list[Running], agent: DevAgent | None = None
) -> None:
    """Start every service; `services` grows as they start, so a stop midway finds them."""
    planned = [Running(s.name, free_port(), free_port(), free_port()) for s in SERVICES]
    discovery = discovery_flags(workdir, planned, agent)
    mesh = str(Path(sys.executable).with_name("mesh"))
    for spec, run in zip(SERVICES, planned, strict=True):
        env = {**os.environ, "DEMO_SERVICE": run.name, "DEMO_PORT": str(run.app_port),
               "DEMO_CALLS": ",".join(spec.calls)}  # fmt: skip
        # Traces: to the collector in OTEL_EXPORTER_OTLP_ENDPOINT, else the span files that
        # `mesh traces` reads.
        env.setdefault(
            "OTEL_TRACES_EXPORTER", "otlp" if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "file"
        )
        command = [
            mesh, "attach", "--service", run.name, "--app-port", str(run.app_port),
            "--listen", f"127.0.0.1:{run.inbound}", "--admin", f"127.0.0.1:{run.admin}",
            *discovery, "--access-log", "--log-level", "warning",
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


async def start_gateway(
    workdir: Path, services: list[Running], agent: DevAgent | None = None
) -> None:
    """The ingress gateway in front of the entry service, found the way the sidecars are."""
    run = Running(GATEWAY, 0, free_port(), free_port())
    config: dict[str, Any] = {
        "service": GATEWAY,
        "admin": f"127.0.0.1:{run.admin}",
        "ingress": {"listen": f"127.0.0.1:{run.inbound}"},
        "access_log": True,
        "log_level": "warning",
        "routes": [
            {"name": service, "prefix": prefix, "service": service, "cache": service != ENTRY}
            for prefix, service in GATEWAY_ROUTES
        ],
    }
    if agent is not None:
        config["consul"] = {**CONSUL_SETTINGS["consul"], "address": agent.address}
    else:
        config["catalog"] = str(workdir / "catalog.json")
    config_path = workdir / "gateway.json"
    config_path.write_text(json.dumps(config, indent=2))
    mesh = str(Path(sys.executable).with_name("mesh"))
    log_file = open(workdir / f"{GATEWAY}.log", "wb")  # noqa: SIM115, ASYNC230
    run.process = await anyio.open_process(
        [mesh, "gateway", "--config", str(config_path)],
        stdin=None, stdout=log_file, stderr=log_file,
    )  # fmt: skip
    services.append(run)
    say(f"  started {GATEWAY:<10} ingress :{run.inbound}  admin :{run.admin}  "
        f"(pid {run.process.pid})")  # fmt: skip


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


async def wait_registered(agent: DevAgent, pool: httpcore.AsyncConnectionPool) -> None:
    """Until every service has a passing sidecar in Consul."""
    with anyio.fail_after(30):
        for spec in SERVICES:
            path = f"/v1/health/connect/{spec.name}?passing"
            while True:  # nothing to wait on but the agent's answer: poll it
                if await agent.get_json(pool, path):
                    break
                await anyio.sleep(0.05)
        names = ", ".join(spec.name for spec in SERVICES)
        say(f"  consul   {names} registered, passing")


async def warm_up(entry: Running, pool: httpcore.AsyncConnectionPool) -> None:
    """Until the gateway answers through the whole mesh: every caller's sidecar has seen its
    peers (a watch may trail the agent by up to its rate limit, a second)."""
    with anyio.fail_after(30):
        while True:
            response = await pool.request("GET", f"http://127.0.0.1:{entry.inbound}/")
            if response.status == 200:
                return
            await anyio.sleep(0.1)


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


async def stop_all(
    services: list[Running], agent: DevAgent | None, pool: httpcore.AsyncConnectionPool
) -> None:
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
    if agent is not None and agent.process is not None:
        # The sidecars deregistered on their way out; the agent goes last.
        try:
            with anyio.fail_after(5):
                left = await agent.get_json(pool, "/v1/agent/services")
            say(f"  consul registrations left: {len(left)}")
        except (httpcore.NetworkError, httpcore.TimeoutException, ValueError, TimeoutError):
            pass
        await agent.stop()
        say(f"  consul agent stopped (pid {agent.process.pid})")
    say("  all demo processes stopped")


async def start_agent(discovery: str, workdir: Path) -> DevAgent | None:
    """The demo's Consul agent (not started yet), or None for the static catalog."""
    if discovery == "static":
        return None
    binary, why = await find_consul()
    if binary is None:
        if discovery == "consul":
            raise RuntimeError(f"no Consul agent available: {why}")
        say(f"  no Consul agent ({why}): using a static catalog")
        return None
    return DevAgent(binary, workdir)


@dataclass
class Mesh:
    """What the demo started, for the stop to find even when start-up was cut short."""

    services: list[Running] = field(default_factory=list)
    agent: DevAgent | None = None


async def start_mesh(
    mesh: Mesh, discovery: str, workdir: Path, pool: httpcore.AsyncConnectionPool
) -> Running:
    """Start the agent (if any) and every service; the entry service once it answers."""
    mesh.agent = agent = await start_agent(discovery, workdir)
    if agent is not None:
        await agent.start(pool)
        assert agent.process is not None
        say(f"  started consul agent {agent.address}  (pid {agent.process.pid})")
    await start_services(workdir, mesh.services, agent)
    await start_gateway(workdir, mesh.services, agent)
    await wait_ready(mesh.services, pool)
    entry = next(s for s in mesh.services if s.name == GATEWAY)
    if agent is not None:
        await wait_registered(agent, pool)
        await warm_up(entry, pool)
    return entry


async def run_demo(duration: float, rps: float, discovery: str = "static") -> int:
    workdir = Path(tempfile.mkdtemp(prefix="mesh-demo-"))
    say(
        f"== mesh demo: {len(SERVICES)} services, each behind its sidecar, and an ingress "
        f"gateway (logs in {workdir})"
    )
    mesh = Mesh()
    stats = Stats()
    stop = anyio.Event()
    failed = False
    async with anyio.create_task_group() as outer:
        # Signals first: Ctrl-C or SIGTERM at any moment, start-up included, stops cleanly.
        await outer.start(stop_on_signals, stop.set)
        async with httpcore.AsyncConnectionPool(max_connections=16) as pool:
            try:
                with anyio.CancelScope() as running:
                    outer.start_soon(_cancel_when, stop, running)
                    entry = await start_mesh(mesh, discovery, workdir, pool)
                    say(f"== sending {rps:g} req/s to {GATEWAY} -> {ENTRY}; Ctrl-C to stop\n")
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(load, entry, rps, stats, pool)
                        tg.start_soon(live_view, mesh.services, stats, pool)
                        with anyio.move_on_after(duration if duration > 0 else None):
                            await stop.wait()
                        tg.cancel_scope.cancel()
                if stats.sent:
                    await summary(mesh.services, stats, pool)
            except (RuntimeError, TimeoutError) as exc:
                say(f"error: the demo could not start: {exc or 'timed out'}")
                failed = True
            finally:
                with anyio.CancelScope(shield=True):
                    await stop_all(mesh.services, mesh.agent, pool)
        outer.cancel_scope.cancel()
    return 1 if failed else 0 if stats.ok or stop.is_set() else 1


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
