"""One sidecar process: listeners, services, admin API, and its lifecycle.

One anyio task group owns every task (connections, discovery watches, sweeps). Start-up
reports readiness through `task_status`; shutdown drains: listeners stop accepting, idle
connections close, in-flight requests finish (their responses say `Connection: close`) until
the drain deadline, then whatever is left is reset and logged.

Integrations (Consul registration) join the lifecycle through `Hooks`, in this order:

    listeners bound -> hooks.run (background)            -> ready
    stop requested  -> hooks.before_drain (still serving: leave discovery, let peers notice)
                    -> drain (stop accepting, finish in-flight) -> hooks.after_drain -> exit
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

import mesh
from discovery.endpoint import DEFAULT_TRUST_DOMAIN, Endpoint, EndpointSet
from discovery.resolver import Resolver
from discovery.static import StaticResolver, parse_address
from mesh.balance import make_balancer
from mesh.cluster import Cluster
from mesh.http1.client import as_protocol
from mesh.http1.deadlines import SWEEPER
from mesh.http1.pool import EndpointPool
from mesh.http1.server import ConnectionTracker, ServerConnection
from mesh.identity.spiffe import parse as parse_spiffe
from mesh.layers.connect import Connect
from mesh.layers.deadline import Deadline
from mesh.layers.passthrough import Passthrough
from mesh.layers.route import Route
from mesh.stack import Handler
from mesh.tcp.dispatch import EitherTracker, ServiceProtocol, either
from mesh.tcp.listener import InboundTcp, OutboundTcp, TcpConnection, TcpLog, TcpTracker
from mesh.tunnel import pipe
from sidecar import h2_wiring, stacks
from sidecar.admin import Admin, json_response
from sidecar.admin_control import MetricsOnly
from sidecar.config import SidecarConfig
from sidecar.metrics import ObservedUpstream, SidecarMetrics
from sidecar.reload import ConfigLoader, reload_on_hangup
from sidecar.services import Services

if TYPE_CHECKING:
    from mesh.identity.authorize import Authorizer
    from mesh.identity.tls import RotatingTls

log = logging.getLogger("sidecar")

_LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost", "0.0.0.0", "::"}


@dataclass
class Listener:
    name: str
    direction: str
    host: str
    port: int
    server: asyncio.Server
    tracker: ConnectionTracker | TcpTracker | EitherTracker


class Hooks(Protocol):
    """What an integration adds to the sidecar's lifecycle. A hook's failure is logged and
    the sequence goes on: shutdown must not hang on a control plane."""

    async def run(self, sidecar: Sidecar, *, task_status: TaskStatus[None]) -> None:
        """Background work, started once the listeners are bound; cancelled at exit."""
        ...

    def waiting_for(self) -> str:
        """Why the sidecar is not ready yet on this hook's account; "" when it is."""
        ...

    async def before_drain(self) -> None:
        """Stop requested, listeners still serving: announce the departure, let peers see it."""
        ...

    async def after_drain(self) -> None:
        """Listeners closed and in-flight work done: final clean-up."""
        ...


class TlsSource(Protocol):
    """Certificate material from somewhere other than files (Consul's CA)."""

    async def load(self) -> RotatingTls:
        """The first material; called before any listener is bound."""
        ...

    async def watch(self) -> None:
        """Keep the material current; runs until cancelled."""
        ...


class Sidecar:
    def __init__(
        self,
        config: SidecarConfig,
        resolver: Resolver | None = None,
        hooks: Sequence[Hooks] = (),
        tls_source: TlsSource | None = None,
        authorizer: Authorizer | None = None,
    ) -> None:
        self.config = config
        self.hooks = tuple(hooks)
        tls = config.tls
        #: This sidecar's certificate material, when the hops between sidecars use mTLS.
        self.tls: RotatingTls | None = None
        self._tls_source = tls_source
        #: Inbound policy when not the config's static one (Consul intentions).
        self.authorizer = authorizer
        if tls is not None and tls_source is None:
            from mesh.identity.tls import TlsFiles  # cryptography loads only when needed

            assert tls.cert is not None and tls.key is not None and tls.roots is not None
            self.tls = TlsFiles(tls.cert, tls.key, tls.roots)
        if resolver is None:
            # Catalog entries without an explicit identity belong to this mesh's trust
            # domain, the one this sidecar's own certificate names.
            own = parse_spiffe(self.tls.identity) if self.tls is not None else None
            trust_domain = own.trust_domain if own is not None else DEFAULT_TRUST_DOMAIN
            if config.catalog is not None:
                resolver = StaticResolver.from_file(config.catalog, trust_domain)
            else:
                resolver = StaticResolver({})
        self.resolver = resolver
        self.listeners: list[Listener] = []
        self._own_ports: set[int] = set()
        self._own_hosts = set(_LOCAL_HOSTS)
        self._tg: TaskGroup | None = None
        self._stop = anyio.Event()
        self._leaving: anyio.Event | None = None
        self._stopped = anyio.Event()
        self._started = False
        self._app_seen = False
        self.services: Services | None = None
        self.app_cluster: Cluster | None = None
        self.inbound_protection: stacks.InboundProtection | None = None
        self._policy_book = config.policy_book()
        self.metrics = SidecarMetrics(self)
        #: Re-reads the config for SIGHUP and POST /reload (set by the CLI).
        self.config_loader: ConfigLoader | None = None
        #: What POST /drain calls: a stop as on SIGTERM (`mesh attach` puts its own here).
        self.graceful_stop: Callable[[], None] = self.request_stop

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

    def _pool_factory(
        self, timeout: float, mesh: bool = False
    ) -> Callable[[Endpoint], EndpointPool]:
        """Pools for mesh endpoints speak mTLS when configured; the app and passthrough
        destinations are plain HTTP."""
        policy = self.config.pool.policy()
        tls = self.tls.client_context if (mesh and self.tls is not None) else None

        def make(endpoint: Endpoint) -> EndpointPool:
            return EndpointPool(
                endpoint.host, endpoint.port, policy, timeout, tls, endpoint.identity
            )

        return make

    async def _watch_tls(self) -> None:
        """Certificate files are replaced by whoever runs the CA: pick new ones up."""
        if self._tls_source is not None:
            await self._tls_source.watch()
            return
        from mesh.identity.tls import TlsFiles

        assert isinstance(self.tls, TlsFiles)
        while True:
            await anyio.sleep(1.0)
            self.tls.reload_if_changed()

    def _outbound_cluster_stack(self, cluster: Cluster) -> ObservedUpstream:
        upstream = stacks.upstream_stack(self.config, cluster, self._policy_book)
        declared = {u.name: u.protocol for u in self.config.upstreams}
        if declared.get(cluster.name) in h2_wiring.HTTP2_PROTOCOLS:
            h2_tls = self.tls.client_context_h2 if self.tls is not None else None
            upstream.adapt_pool = lambda pool: h2_wiring.speak_h2(pool, h2_tls)
        return self.metrics.observe_upstream(upstream, cluster.name)

    async def _listen(
        self,
        name: str,
        direction: str,
        address: str,
        handler: Handler,
        tls: ssl.SSLContext | None = None,
    ) -> Listener:
        tracker = ConnectionTracker(self.config.limits.policy(), name)
        scheme = b"https" if tls is not None else b"http"
        factory: Callable[[], asyncio.BaseProtocol] = lambda: as_protocol(  # noqa: E731
            ServerConnection(handler, tracker, scheme)
        )
        return await self._bind(name, direction, address, tracker, factory, tls)

    async def _listen_tcp(
        self,
        name: str,
        direction: str,
        address: str,
        make: Callable[[TcpTracker, TcpLog], TcpConnection],
        tls: ssl.SSLContext | None = None,
    ) -> Listener:
        """A listener that tunnels raw TCP (mesh.tcp): no HTTP parsing on it."""
        tracker = TcpTracker(self.config.limits.policy(), name)
        access_log = TcpLog(direction, self.config.access_log)
        return await self._bind(
            name, direction, address, tracker, lambda: make(tracker, access_log), tls
        )

    async def _listen_either(
        self, name: str, address: str, handler: Handler, cluster: Cluster
    ) -> Listener:
        """An upstream listener speaking HTTP/1.1 or tunnelling TCP, as discovery says."""
        http = ConnectionTracker(self.config.limits.policy(), name)
        tcp = TcpTracker(self.config.limits.policy(), name)
        make_tcp = self._outbound_tcp(cluster)
        access_log = TcpLog("outbound", self.config.access_log)
        factory = either(
            ServiceProtocol(cluster),
            lambda: as_protocol(ServerConnection(handler, http, b"http")),
            lambda: make_tcp(tcp, access_log),
        )
        return await self._bind(name, "outbound", address, EitherTracker(http, tcp), factory, None)

    async def _bind(
        self,
        name: str,
        direction: str,
        address: str,
        tracker: ConnectionTracker | TcpTracker | EitherTracker,
        factory: Callable[[], asyncio.BaseProtocol],
        tls: ssl.SSLContext | None,
    ) -> Listener:
        host, port = parse_address(address, name)
        loop = asyncio.get_running_loop()
        if tls is not None:
            # The handshake is started by our acceptor so a refused caller gets its alert.
            from mesh.identity.accept import RefusalLog, acceptor_factory

            timeout = self.config.limits.header_timeout
            factory = acceptor_factory(factory, tls, timeout, RefusalLog(name))
        server = await loop.create_server(factory, host, port, reuse_address=True, backlog=1024)
        bound_port = server.sockets[0].getsockname()[1]
        listener = Listener(name, direction, host, bound_port, server, tracker)
        self.listeners.append(listener)
        if bound_port not in self._own_ports:
            self._own_ports.add(bound_port)
            if self.services is not None:
                self.services.recheck()
        self._own_hosts.add(host)
        self._spawn(tracker.sweep_forever)
        log.info("%s listener on %s:%d", name, host, bound_port)
        return listener

    async def _add_listeners(self) -> None:
        """Listeners a variant of the sidecar adds (the ingress gateway's); none here."""

    def _inbound_tcp(
        self, app: EndpointPool, authorize: bool
    ) -> Callable[[TcpTracker, TcpLog], TcpConnection]:
        authorizer = None
        if authorize:  # the same policy as the HTTP inbound stack's (Consul's, else config's)
            authorizer = lambda: self.authorizer or self.config.authorization.authorizer()  # noqa: E731
        service = self.config.service
        return lambda tracker, access: InboundTcp(tracker, access, app, service, authorizer)

    def _outbound_tcp(self, cluster: Cluster) -> Callable[[TcpTracker, TcpLog], TcpConnection]:
        balancer = make_balancer(self.config.balance)
        return lambda tracker, access: OutboundTcp(tracker, access, cluster, balancer)

    # -- lifecycle ----------------------------------------------------------------------------
    def _reserve_own_ports(self) -> None:
        """Every configured listener port counts as "this sidecar" before anything binds:
        discovery may answer first, and an endpoint that is us must never be dialled."""
        config = self.config
        addresses = [config.admin, *(f"x:{u.local_port}" for u in config.upstreams)]
        if config.metrics.listen is not None:
            addresses.append(config.metrics.listen)
        if config.listen is not None:
            addresses.append(config.listen)
        if config.proxy_port:
            addresses.append(f"x:{config.proxy_port}")
        for address in addresses:
            port = int(address.rsplit(":", 1)[1])
            if port:
                self._own_ports.add(port)

    async def serve(self, *, task_status: TaskStatus[Sidecar] = anyio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        self._reserve_own_ports()
        if self._tls_source is not None:
            self.tls = await self._tls_source.load()
        pipe.configure(config.tunnel.idle_timeout)
        outbound_pools = h2_wiring.by_meta(
            self._pool_factory(config.outbound_timeouts.connect, mesh=True),
            self.tls.client_context_h2 if self.tls is not None else None,
        )
        services = self.services = Services(
            self.resolver, outbound_pools, self.is_self, self._outbound_cluster_stack, self._spawn
        )
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(SWEEPER.run)
            tg.start_soon(self.metrics.loop_lag.run)
            if self.config_loader is not None:
                tg.start_soon(reload_on_hangup, self)
            if self.tls is not None:
                tg.start_soon(self._watch_tls)
            # Reserve the listener ports first so loop detection knows them from the start.
            if config.listen is not None and config.app_port is not None:
                app_pools = self._pool_factory(config.inbound_timeouts.connect)
                if config.app_protocol in h2_wiring.HTTP2_PROTOCOLS:
                    app_pools = h2_wiring.always(app_pools)
                app = Cluster(config.service, app_pools, lambda e: False)
                local_app = Endpoint(config.app_host, config.app_port)
                app.update(EndpointSet(config.service, (local_app,)))
                self.app_cluster = app
                tg.start_soon(self._probe_app)
                identity = self.tls.identity if self.tls is not None else None
                if config.app_protocol == "tcp":
                    await self._listen_tcp(
                        "inbound",
                        "inbound",
                        config.listen,
                        self._inbound_tcp(app_pools(local_app), identity is not None),
                        self.tls.listening_context if self.tls is not None else None,
                    )
                else:
                    inbound = stacks.inbound_stack(config, app, identity, self.authorizer)
                    self.inbound_protection = inbound.protection
                    await self._listen(
                        "inbound",
                        "inbound",
                        config.listen,
                        self.metrics.observe(inbound.handler, "inbound", config.service),
                        self.tls.listening_context if self.tls is not None else None,
                    )
            for upstream in config.upstreams:
                # An upstream port is bound to one service: its stack is known now, and no
                # per-request routing is needed.
                route = self.services.stack(upstream.name)
                if upstream.protocol == "tcp":
                    await self._listen_tcp(
                        f"upstream:{upstream.name}",
                        "outbound",
                        f"{upstream.local_address}:{upstream.local_port}",
                        self._outbound_tcp(self.services.clusters[upstream.name]),
                    )
                    continue
                if upstream.protocol is None and config.consul.address is not None:
                    # Consul may declare the service TCP (Meta protocol=tcp): it decides.
                    await self._listen_either(
                        f"upstream:{upstream.name}",
                        f"{upstream.local_address}:{upstream.local_port}",
                        stacks.outbound_stack(config, route),
                        self.services.clusters[upstream.name],
                    )
                    continue
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
                        self._pool_factory(config.outbound_timeouts.connect),
                        self.is_self,
                    )
                route = Route(self.services, passthrough=passthrough)
                await self._listen(
                    "proxy",
                    "outbound",
                    f"{config.proxy_address}:{config.proxy_port}",
                    stacks.outbound_stack(config, route),
                )
            await self._add_listeners()
            await self._listen("admin", "admin", config.admin, Admin(self))
            if config.metrics.listen is not None:
                await self._listen(
                    "metrics", "admin", config.metrics.listen, MetricsOnly(self, json_response)
                )
            for hook in self.hooks:
                await tg.start(hook.run, self)
            self._started = True
            log.info("data path: %s", "compiled (mypyc)" if mesh.compiled() else "pure Python")
            task_status.started(self)
            await self._stop.wait()
            await self.leave()
            await self.drain(("inbound", "outbound", "admin"))
            for hook in self.hooks:
                await _logged(hook.after_drain, "after drain")
            tg.cancel_scope.cancel()
        services.close()
        if self.app_cluster is not None:
            self.app_cluster.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def leave(self) -> None:
        """Run the hooks' before_drain, once, while still serving (later calls wait for it)."""
        if self._leaving is not None:
            await self._leaving.wait()
            return
        self._leaving = anyio.Event()
        try:
            for hook in self.hooks:
                await _logged(hook.before_drain, "before drain")
        finally:
            self._leaving.set()

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
        if self._stop.is_set() or self._leaving is not None:
            return False, "draining"
        assert self.services is not None
        waiting = [c.name for c in self.services.clusters.values() if not c.answered]
        if waiting:
            return False, "waiting for discovery: " + ", ".join(sorted(waiting))
        for hook in self.hooks:
            if why := hook.waiting_for():
                return False, why
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
        upstreams = self.services.upstreams
        data = {
            name: {**c.statistics(), "resilience": upstreams[name].statistics()}
            for name, c in sorted(self.services.clusters.items())
        }
        if self.app_cluster is not None:
            app = data["<local app>"] = self.app_cluster.statistics()
            if self.inbound_protection is not None:
                app["resilience"] = self.inbound_protection.statistics()
        return data

    def listeners_snapshot(self) -> dict[str, Any]:
        return {
            lst.name: {"address": f"{lst.host}:{lst.port}", **lst.tracker.statistics()}
            for lst in self.listeners
        }


async def _logged(step: Callable[[], Coroutine[Any, Any, None]], what: str) -> None:
    try:
        await step()
    except Exception:
        log.exception("%s: hook failed", what)


async def _guarded(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """A connection's or watch's failure is logged; it never takes the sidecar down."""
    try:
        await fn()
    except Exception:
        log.exception("task failed")
