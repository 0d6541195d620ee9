"""One sidecar process: listeners, services, admin API, and its lifecycle.

One anyio task group owns every task (connections, discovery watches, sweeps). Start-up
reports readiness through `task_status`; shutdown drains: listeners stop accepting, idle
connections close, in-flight requests finish (their responses say `Connection: close`) until
the drain deadline, then whatever is left is reset and logged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

import mesh
from discovery.endpoint import Endpoint, EndpointSet
from discovery.resolver import Resolver
from discovery.static import StaticResolver, parse_address
from mesh.cluster import Cluster
from mesh.http1.client import as_protocol
from mesh.http1.deadlines import SWEEPER
from mesh.http1.pool import EndpointPool
from mesh.http1.server import ConnectionTracker, ServerConnection
from mesh.layers.connect import Connect
from mesh.layers.deadline import Deadline
from mesh.layers.passthrough import Passthrough
from mesh.layers.route import Route
from mesh.stack import Handler
from sidecar import stacks
from sidecar.admin import Admin
from sidecar.config import SidecarConfig
from sidecar.services import Services

log = logging.getLogger("sidecar")

_LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost", "0.0.0.0", "::"}


@dataclass
class Listener:
    name: str
    direction: str
    host: str
    port: int
    server: asyncio.Server
    tracker: ConnectionTracker


class Sidecar:
    def __init__(self, config: SidecarConfig, resolver: Resolver | None = None) -> None:
        self.config = config
        if resolver is None:
            if config.catalog is not None:
                resolver = StaticResolver.from_file(config.catalog)
            else:
                resolver = StaticResolver({})
        self.resolver = resolver
        self.listeners: list[Listener] = []
        self._own_ports: set[int] = set()
        self._own_hosts = set(_LOCAL_HOSTS)
        self._tg: TaskGroup | None = None
        self._stop = anyio.Event()
        self._stopped = anyio.Event()
        self._started = False
        self._app_seen = False
        self.services: Services | None = None
        self.app_cluster: Cluster | None = None

    # -- wiring -------------------------------------------------------------------------------
    def _spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        assert self._tg is not None
        self._tg.start_soon(_guarded, fn)

    def is_self(self, endpoint: Endpoint) -> bool:
        if endpoint.port not in self._own_ports:
            return False
        if endpoint.host in self._own_hosts:
            return True
        try:
            return ipaddress.ip_address(endpoint.host).is_loopback
        except ValueError:
            return False

    def _pool_factory(self, timeout: float) -> Callable[[Endpoint], EndpointPool]:
        policy = self.config.pool.policy()

        def make(endpoint: Endpoint) -> EndpointPool:
            return EndpointPool(endpoint.host, endpoint.port, policy, timeout)

        return make

    def _outbound_cluster_stack(self, cluster: Cluster) -> Handler:
        return stacks.cluster_stack(self.config, cluster, self.config.outbound_timeouts.request)

    async def _listen(self, name: str, direction: str, address: str, handler: Handler) -> Listener:
        host, port = parse_address(address, name)
        tracker = ConnectionTracker(self.config.limits.policy(), name)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: as_protocol(ServerConnection(handler, tracker)),
            host,
            port,
            reuse_address=True,
            backlog=1024,
        )
        bound_port = server.sockets[0].getsockname()[1]
        listener = Listener(name, direction, host, bound_port, server, tracker)
        self.listeners.append(listener)
        self._own_ports.add(bound_port)
        self._own_hosts.add(host)
        self._spawn(tracker.sweep_forever)
        log.info("%s listener on %s:%d", name, host, bound_port)
        return listener

    # -- lifecycle ----------------------------------------------------------------------------
    async def serve(self, *, task_status: TaskStatus[Sidecar] = anyio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        outbound_pools = self._pool_factory(config.outbound_timeouts.connect)
        services = self.services = Services(
            self.resolver, outbound_pools, self.is_self, self._outbound_cluster_stack, self._spawn
        )
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(SWEEPER.run)
            # Reserve the listener ports first so loop detection knows them from the start.
            if config.listen is not None and config.app_port is not None:
                app_pools = self._pool_factory(config.inbound_timeouts.connect)
                app = Cluster(config.service, app_pools, lambda e: False)
                local_app = Endpoint(config.app_host, config.app_port)
                app.update(EndpointSet(config.service, (local_app,)))
                self.app_cluster = app
                tg.start_soon(self._probe_app)
                await self._listen(
                    "inbound", "inbound", config.listen, stacks.inbound_stack(config, app)
                )
            for upstream in config.upstreams:
                route = Route(self.services, fixed_service=upstream.name)
                await self._listen(
                    f"upstream:{upstream.name}",
                    "outbound",
                    f"{upstream.local_address}:{upstream.local_port}",
                    stacks.outbound_stack(config, route),
                )
            if config.proxy_port is not None:
                passthrough = None
                if config.passthrough == "allow":
                    passthrough = Passthrough(
                        Deadline(Connect(), config.outbound_timeouts.request),
                        outbound_pools,
                        self.is_self,
                    )
                route = Route(self.services, passthrough=passthrough)
                await self._listen(
                    "proxy",
                    "outbound",
                    f"{config.proxy_address}:{config.proxy_port}",
                    stacks.outbound_stack(config, route),
                )
            await self._listen("admin", "admin", config.admin, Admin(self))
            self._started = True
            log.info("data path: %s", "compiled (mypyc)" if mesh.compiled() else "pure Python")
            task_status.started(self)
            await self._stop.wait()
            await self.drain(("inbound", "outbound", "admin"))
            tg.cancel_scope.cancel()
        services.close()
        if self.app_cluster is not None:
            self.app_cluster.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def drain(self, directions: tuple[str, ...]) -> None:
        """Stop accepting on these listeners and let their in-flight requests finish."""
        chosen = [lst for lst in self.listeners if lst.direction in directions]
        for listener in chosen:
            listener.server.close()
            listener.tracker.start_drain()
        with anyio.move_on_after(self.config.drain_timeout):
            for listener in chosen:
                await listener.tracker.wait_empty()
        for listener in chosen:
            left = listener.tracker.abort_all()
            if left:
                log.warning(
                    "%s: reset %d connection(s) still open at the drain deadline",
                    listener.name,
                    left,
                )

    # -- state --------------------------------------------------------------------------------
    def readiness(self, include_app: bool = True) -> tuple[bool, str]:
        """Ready: listeners up, discovery answered, and (for /ready) the app accepting."""
        if not self._started:
            return False, "starting"
        if self._stop.is_set():
            return False, "draining"
        assert self.services is not None
        waiting = [c.name for c in self.services.clusters.values() if not c.answered]
        if waiting:
            return False, "waiting for discovery: " + ", ".join(sorted(waiting))
        if include_app and self.app_cluster is not None and not self._app_seen:
            return False, f"waiting for the app on {self.config.app_host}:{self.config.app_port}"
        return True, "ok"

    async def _probe_app(self) -> None:
        """Until the app first accepts a connection, inbound traffic has nowhere to go."""
        config = self.config
        assert config.app_port is not None
        while not self._app_seen:
            try:
                stream = await anyio.connect_tcp(config.app_host, config.app_port)
            except OSError:
                await anyio.sleep(0.05)
                continue
            await stream.aclose()
            self._app_seen = True
            log.info("the app accepts connections on %s:%d", config.app_host, config.app_port)

    def port_of(self, name: str) -> int:
        for listener in self.listeners:
            if listener.name == name:
                return listener.port
        raise KeyError(name)

    def clusters_snapshot(self) -> dict[str, Any]:
        assert self.services is not None
        data = {name: c.statistics() for name, c in sorted(self.services.clusters.items())}
        if self.app_cluster is not None:
            data["<local app>"] = self.app_cluster.statistics()
        return data

    def listeners_snapshot(self) -> dict[str, Any]:
        return {
            lst.name: {"address": f"{lst.host}:{lst.port}", **lst.tracker.statistics()}
            for lst in self.listeners
        }


async def _guarded(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """A connection's or watch's failure is logged; it never takes the sidecar down."""
    try:
        await fn()
    except Exception:
        log.exception("task failed")
