"""`mesh demo`: the demo mesh as local processes, with traffic and a live view.

The mesh is the one in sidecar/demo/topology.py. Each service runs as `mesh attach --config
<service>.json -- python -m sidecar.demo.app` (its sidecar first, then the app), and the
entry is the ingress gateway (`mesh gateway --config gateway.json`) routing by path prefix.
Every hop behind the gateway is mutual TLS with leaves from the built-in CA (the gateway has
its own), and each sidecar admits only the services that call it. The load generator is an
outside client: plain HTTP to the gateway's public listener. Discovery is a static catalog
of the sidecars' inbound listeners, or, with `--discovery consul` (or `auto` when
scripts/install-consul.sh can provide an agent), a Consul dev agent the demo starts on free
loopback ports.

The payments switch (`--payments ok|slow|failing|down`, then the keys o/s/f/d + Enter, or writing
the mode into the file the demo names) makes payments slow or failing while it runs.
Ctrl-C (or --duration) stops every process this demo started, by PID, and waits for them;
the sidecars deregister before the agent stops.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpcore
from anyio.abc import Process

from discovery.endpoint import DEFAULT_TRUST_DOMAIN
from sidecar.demo import load as loadgen
from sidecar.demo.certs import issue_all
from sidecar.demo.consul_agent import DevAgent, find_consul
from sidecar.demo.load import Stats
from sidecar.demo.plan import app_env, gateway_config, sidecar_config
from sidecar.demo.ports import free_port
from sidecar.demo.topology import (
    ENTRY,
    FAULT_MODES,
    FAULTY,
    LOAD_PATHS,
    SERVICES,
    members,
)
from sidecar.demo.watch import (
    ServiceLog,
    UpstreamState,
    call_tree,
    resilience_table,
    table,
    upstream_states,
)
from sidecar.signals import stop_on_signals

log = logging.getLogger("sidecar.demo")


@dataclass
class Running:
    name: str
    app_port: int
    inbound: int
    admin: int
    process: Process | None = None
    #: The gateway's public listener (it has no app and no mesh inbound).
    public: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.public}"


def say(text: str) -> None:
    print(text, flush=True)


#: Timeouts of the demo's own admin requests.
ADMIN = {"connect": 2.0, "pool": 2.0, "read": 2.0, "write": 2.0}

#: Sidecar settings for the demo's Consul mode: quick health reports and a short drain.
CONSUL_SETTINGS = {"check_interval": 0.5, "drain_grace": 1.0}


def discovery_keys(workdir: Path, planned: list[Running], agent: DevAgent | None) -> dict[str, Any]:
    """How every sidecar finds its peers: through the agent, or a static catalog."""
    if agent is not None:
        return {"consul": {"address": agent.address, **CONSUL_SETTINGS}}
    catalog = {"services": {s.name: [f"127.0.0.1:{s.inbound}"] for s in planned}}
    catalog_path = workdir / "catalog.json"
    catalog_path.write_text(json.dumps(catalog, indent=2))
    return {"catalog": str(catalog_path)}


async def spawn(workdir: Path, name: str, command: list[str], env: dict[str, str]) -> Process:
    # The child writes its output (the access log among it) into <workdir>/<name>.log.
    log_file = open(workdir / f"{name}.log", "wb")  # noqa: SIM115, ASYNC230
    # Traces: to the collector in OTEL_EXPORTER_OTLP_ENDPOINT, else the span files that
    # `mesh traces` reads.
    traces = "otlp" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "file"
    env = {"OTEL_TRACES_EXPORTER": traces, **os.environ, **env}
    try:
        return await anyio.open_process(
            command, stdin=None, stdout=log_file, stderr=log_file, env=env
        )
    finally:
        log_file.close()  # the child has its own copy


@dataclass
class Launch:
    """One process of the local demo, before it starts: its sidecar config, command, env."""

    run: Running
    config: dict[str, Any]
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


def plan_local(workdir: Path, agent: DevAgent | None = None) -> list[Launch]:
    """Every service (`mesh attach` with its app), then the gateway."""
    planned = [Running(s.name, free_port(), free_port(), free_port()) for s in SERVICES]
    discovery = discovery_keys(workdir, planned, agent)
    certs = str(workdir / "certs")
    mesh = str(Path(sys.executable).with_name("mesh"))
    launches = []
    for run in planned:
        config = sidecar_config(
            run.name, certs, app_port=run.app_port, listen=f"127.0.0.1:{run.inbound}",
            admin=f"127.0.0.1:{run.admin}", log_level="warning", **discovery,
        )  # fmt: skip
        command = [mesh, "attach", "--config", str(workdir / f"{run.name}.json"),
                   "--", sys.executable, "-m", "sidecar.demo.app"]  # fmt: skip
        env = app_env(run.name, run.app_port, str(workdir / f"{FAULTY}.mode"))
        launches.append(Launch(run, config, command, env))
    gateway = Running(ENTRY, 0, 0, free_port(), public=free_port())
    config = gateway_config(
        certs, f"127.0.0.1:{gateway.public}", admin=f"127.0.0.1:{gateway.admin}",
        log_level="warning", **discovery,
    )  # fmt: skip
    command = [mesh, "gateway", "--config", str(workdir / f"{ENTRY}.json")]
    return [*launches, Launch(gateway, config, command)]


async def start_services(
    workdir: Path, services: list[Running], agent: DevAgent | None = None
) -> None:
    """Start every process of `plan_local`; `services` grows as they start, so a stop
    midway finds them."""
    for launch in plan_local(workdir, agent):
        run = launch.run
        (workdir / f"{run.name}.json").write_text(json.dumps(launch.config, indent=2))
        run.process = await spawn(workdir, run.name, launch.command, launch.env)
        services.append(run)
        if run.public:
            say(f"  started {run.name:<14} public :{run.public}  admin :{run.admin}  "
                f"(pid {run.process.pid})")  # fmt: skip
        else:
            say(f"  started {run.name:<14} sidecar :{run.inbound}  app :{run.app_port}  "
                f"admin :{run.admin}  (pid {run.process.pid})")  # fmt: skip


def check_alive(services: list[Running]) -> None:
    """A demo process that has exited (`mesh attach` exits when its app does) ends the
    start-up with its name, rather than a wait for answers that cannot come."""
    for run in services:
        if run.process is not None and run.process.returncode is not None:
            raise RuntimeError(
                f"{run.name} exited early ({run.process.returncode}); its output is in "
                f"{run.name}.log in the demo's directory"
            )


async def wait_ready(services: list[Running], pool: httpcore.AsyncConnectionPool) -> None:
    with anyio.fail_after(30):
        for run in services:
            while True:
                check_alive([run])
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


async def warm_up(
    client: httpcore.AsyncConnectionPool, url: str, stats: Stats, services: list[Running]
) -> None:
    """Until every load path answers through the whole mesh: every caller's sidecar has seen
    its peers (a Consul watch may trail the agent by up to its rate limit, a second)."""
    with anyio.fail_after(30):
        for path in LOAD_PATHS:
            # Nothing to wait on but the mesh's answer: ask again, a tenth of a second apart.
            while await loadgen.send_one(client, url, path, stats) != 200:
                check_alive(services)  # an app that died will never answer
                await anyio.sleep(0.1)


class Switch:
    """The payments switch: a file the payments app re-reads when it changes (anyone may
    write it; the live view shows what it holds)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def set(self, mode: str) -> None:
        self.path.write_text(mode + "\n")

    @property
    def mode(self) -> str:
        try:
            return self.path.read_text().strip() or "ok"
        except OSError:
            return "ok"


async def keys(switch: Switch) -> None:
    """o, s, f or d (then Enter) on a terminal flips the payments switch."""
    if not sys.stdin.isatty():
        return
    by_key = {mode[0]: mode for mode in FAULT_MODES}
    fd = sys.stdin.fileno()
    while True:
        await anyio.wait_readable(fd)
        data = os.read(fd, 64).decode(errors="replace")
        if not data:
            return  # end of input
        for key in data.strip().lower():
            if key in by_key:
                switch.set(by_key[key])
                say(f"  == {FAULTY} switch: {switch.mode}")


async def upstream_view(
    services: list[Running], pool: httpcore.AsyncConnectionPool
) -> dict[str, list[UpstreamState]]:
    """Per sidecar, what its resilience did for each upstream (its admin /clusters)."""
    view: dict[str, list[UpstreamState]] = {}
    for run in services:
        try:
            resp = await pool.request(
                "GET", f"http://127.0.0.1:{run.admin}/clusters", extensions={"timeout": ADMIN}
            )
            view[run.name] = upstream_states(run.name, json.loads(resp.content))
        except (httpcore.NetworkError, httpcore.TimeoutException, ValueError):
            continue  # stopping, or busy: the next second asks again
    return view


async def live_view(
    logs: list[ServiceLog],
    stats: Stats,
    switch: Switch,
    services: list[Running],
    pool: httpcore.AsyncConnectionPool,
) -> None:
    """Every second the load's line; on a terminal the per-service table redrawn in place,
    otherwise that table every five seconds."""
    last_sent = 0
    tty = sys.stdout.isatty()
    tick = 0
    while True:
        await anyio.sleep(1.0)
        tick += 1
        for service_log in logs:
            service_log.read()
        rate = stats.sent - last_sent
        last_sent = stats.sent
        errors = sum(stats.errors.values())
        line = (f"  load: {rate:>4} req/s  total {stats.sent:>6}  ok {stats.ok:>6}  "
                f"errors {errors:>4}  p99 {stats.p99_ms():7.1f} ms  "
                f"{FAULTY}: {switch.mode}")  # fmt: skip
        stats.latencies = stats.latencies[-5000:]
        if tty or tick % 5 == 0:
            rows = table(logs, live=True, states=await upstream_view(services, pool))
        if tty:
            if tick > 1:
                print(f"\x1b[{len(rows) + 1}F", end="")  # back to the block's first line
            say("\n".join(f"{r}\x1b[K" for r in [line, *rows]))
        else:
            say(line)
            if tick % 5 == 0:
                say("\n".join(rows))


def draw_tree(stats: Stats) -> list[str]:
    """The last answer to the path that crosses most of the mesh (orders), else any."""
    path = next((p for p in LOAD_PATHS if p.startswith("/orders") and p in stats.answers), None)
    path = path or next(iter(stats.answers), None)
    if path is None:
        return []
    answer = stats.answers[path]
    # The gateway passed on the answer of the route's service, which nests its own calls.
    return [f"\n== one request: GET {path} (as the apps reported it)",
            *call_tree(ENTRY, answer["status"], {"calls": [answer]})]  # fmt: skip


async def summary(
    logs: list[ServiceLog],
    stats: Stats,
    services: list[Running],
    pool: httpcore.AsyncConnectionPool,
) -> None:
    say("\n== summary")
    say(f"  requests sent {stats.sent}, ok {stats.ok}, errors {dict(stats.errors) or 'none'}")
    for service_log in logs:
        service_log.read()
    say("\n".join(table(logs, live=False)))
    view = await upstream_view(services, pool)
    say(f"\n== resilience (each caller's sidecar and the {ENTRY}, from their /clusters)")
    say(
        "\n".join(resilience_table([state for run in services for state in view.get(run.name, [])]))
    )
    gateway = next((run for run in services if run.name == ENTRY), None)
    if gateway is not None:
        say(await cache_line(gateway, pool))
    for line in draw_tree(stats):
        say(line)


async def cache_line(gateway: Running, pool: httpcore.AsyncConnectionPool) -> str:
    """What the gateway's cache did (its admin /gateway): the cacheable routes' hits."""
    try:
        resp = await pool.request(
            "GET", f"http://127.0.0.1:{gateway.admin}/gateway", extensions={"timeout": ADMIN}
        )
        cache = json.loads(resp.content)["cache"]
        return f"  {ENTRY} cache: hits {cache['hits']}, misses {cache['misses']}"
    except (httpcore.NetworkError, httpcore.TimeoutException, ValueError, KeyError):
        return f"  {ENTRY} cache: no answer"


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


async def trust_domain(agent: DevAgent | None, pool: httpcore.AsyncConnectionPool) -> str:
    """Consul discovery expects peers' SPIFFE IDs in the agent's trust domain."""
    if agent is None:
        return DEFAULT_TRUST_DOMAIN
    roots = await agent.get_json(pool, "/v1/connect/ca/roots")
    return str(roots["TrustDomain"]).lower()


async def start_mesh(
    mesh: Mesh, discovery: str, workdir: Path, pool: httpcore.AsyncConnectionPool
) -> Running:
    """Start the agent (if any), issue identities, start every service and the gateway;
    return the latter once all are ready."""
    mesh.agent = agent = await start_agent(discovery, workdir)
    if agent is not None:
        await agent.start(pool)
        assert agent.process is not None
        say(f"  started consul agent {agent.address}  (pid {agent.process.pid})")
    domain = await trust_domain(agent, pool)
    issue_all(workdir / "ca", workdir / "certs", domain)
    say(f"  mTLS     a root for {domain}, a leaf for the {ENTRY} and each service "
        f"(in {workdir / 'certs'})")  # fmt: skip
    await start_services(workdir, mesh.services, agent)
    await wait_ready(mesh.services, pool)
    if agent is not None:
        await wait_registered(agent, pool)
    return mesh.services[-1]


async def run_demo(
    duration: float, rps: float, discovery: str = "static", payments: str = "ok"
) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="mesh-demo-"))
    say(f"== mesh demo: {len(SERVICES)} services, each behind its sidecar, and the {ENTRY} "
        f"in front (logs in {workdir})")  # fmt: skip
    mesh = Mesh()
    stats = Stats()
    switch = Switch(workdir / f"{FAULTY}.mode")
    switch.set("ok")
    logs = [ServiceLog(name, workdir / f"{name}.log") for name in members()]
    stop = anyio.Event()
    failed = False
    async with anyio.create_task_group() as outer:
        # Signals first: Ctrl-C or SIGTERM at any moment, start-up included, stops cleanly.
        await outer.start(stop_on_signals, stop.set)
        async with httpcore.AsyncConnectionPool(max_connections=16) as pool:
            try:
                with anyio.CancelScope() as running:
                    outer.start_soon(_cancel_when, stop, running)
                    gateway = await start_mesh(mesh, discovery, workdir, pool)
                    async with loadgen.client() as client:
                        warm = Stats()
                        await warm_up(client, gateway.url, warm, mesh.services)
                        for service_log in logs:
                            service_log.restart()
                        say(f"  warm-up  every route answers through the {ENTRY} "
                            f"({warm.sent} requests, {warm.sent - warm.ok} not 200); "
                            "the numbers below count from here")  # fmt: skip
                        switch.set(payments)
                        say(f"== sending {rps:g} req/s to the {ENTRY} at {gateway.url}; "
                            f"{FAULTY}: {payments}; Ctrl-C to stop")  # fmt: skip
                        say(f"   {FAULTY} switch: o, s, f or d + Enter (ok, slow, failing, "
                            f"down), or `echo failing > {switch.path}`\n")  # fmt: skip
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(loadgen.send_load, client, gateway.url, rps, stats)
                            tg.start_soon(live_view, logs, stats, switch, mesh.services, pool)
                            tg.start_soon(keys, switch)
                            with anyio.move_on_after(duration if duration > 0 else None):
                                await stop.wait()
                            tg.cancel_scope.cancel()
                if stats.sent:
                    await summary(logs, stats, mesh.services, pool)
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
