"""Raw TCP through the mesh: listeners that tunnel bytes, with no HTTP parsing at all.

    app --TCP--> outbound listener (upstream declared `protocol: tcp`)
                   | endpoint from discovery, connect timeout, mTLS, peer identity checked
                   v
                 inbound listener of a service whose `app_protocol` is tcp
                   | caller identity required and authorized, then
                   v
                 its app --TCP-->

How the inbound side knows the bytes are TCP: a service has one protocol (as Consul's
service-defaults `protocol`), so a sidecar whose app is TCP runs its inbound listener as a
TCP tunnel; callers declare the same service as a TCP upstream. Authorization is decided
once per connection, after the TLS handshake and before the app is dialled: a refused
caller is closed with not one byte sent to the app.

Each accepted connection is one `mesh.tunnel.pipe` tunnel; it is logged (one JSON line, like
a request) when it ends, and counted on its listener's `TcpTracker`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO, cast

from mesh.balance import Balancer
from mesh.cluster import Cluster, EndpointState
from mesh.errors import Forbidden, LoopDetected, MeshError, NoEndpoints
from mesh.http1.pool import EndpointPool
from mesh.identity.authorize import Authorizer
from mesh.identity.spiffe import peer_identity
from mesh.inline import Inline
from mesh.layers.balance import first_endpoints
from mesh.policy import HttpLimits
from mesh.tunnel.pipe import Side, Tunnel

log = logging.getLogger("mesh.tcp")

#: Endpoints tried for one connection when connecting fails (nothing was sent yet).
CONNECT_ATTEMPTS = 2


class TcpTracker:
    """Every connection of one TCP listener: the connection limit, counters and drain.

    It offers what the sidecar asks of an HTTP listener's ConnectionTracker.
    """

    def __init__(self, limits: HttpLimits, name: str = "") -> None:
        #: Only `max_connections` applies to a TCP listener; replaced on a config reload.
        self.limits = limits
        self.name = name
        self.connections: set[TcpConnection] = set()
        self.draining = False
        self.accepted = 0
        self.refused = 0
        self.refused_identity = 0
        self.denied = 0
        self.connect_failures = 0
        self._empty: asyncio.Event | None = None

    def statistics(self) -> dict[str, int | bool | str]:
        return {
            "protocol": "tcp",
            "open": len(self.connections),
            "active": len(self.connections),
            "idle": 0,
            "accepted": self.accepted,
            "refused_over_limit": self.refused,
            "refused_no_identity": self.refused_identity,
            "refused_unauthorized": self.denied,
            "connect_failures": self.connect_failures,
            "draining": self.draining,
        }

    def add(self, conn: TcpConnection) -> bool:
        if len(self.connections) >= self.limits.max_connections or self.draining:
            self.refused += 1
            return False
        self.accepted += 1
        self.connections.add(conn)
        return True

    def discard(self, conn: TcpConnection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._empty is not None:
            self._empty.set()

    async def sweep_forever(self) -> None:
        """Tunnels time themselves out; nothing to sweep (kept for the listener contract)."""
        await asyncio.Event().wait()

    def start_drain(self) -> None:
        """No new connections; open tunnels carry on until they end or the drain deadline."""
        self.draining = True

    async def wait_empty(self) -> None:
        if not self.connections:
            return
        self._empty = asyncio.Event()
        await self._empty.wait()

    def abort_all(self) -> int:
        conns = list(self.connections)
        for conn in conns:
            conn.abort()
        return len(conns)


class TcpLog:
    """One JSON line per tunnel, shaped like the HTTP access log's (no header, no payload)."""

    def __init__(self, direction: str, enabled: bool, stream: TextIO | None = None) -> None:
        self.direction = direction
        self.enabled = enabled
        self.stream = stream or sys.stdout

    def write(self, conn: TcpConnection, bytes_in: int, bytes_out: int, error: str) -> None:
        if not self.enabled:
            return
        record: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
            "direction": self.direction,
            "protocol": "tcp",
            "service": conn.service or None,
            "upstream": conn.upstream_address or None,
            "caller": conn.caller or None,
            "mesh_error": error or None,
            "duration_ms": round((conn.loop.time() - conn.started) * 1000, 3),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "client": conn.client_addr,
        }
        self.stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.stream.flush()


Opener = Callable[["TcpConnection"], Any]


class TcpConnection(Side):
    """One accepted connection: the client side of its tunnel.

    Reading pauses at once; the upstream is connected (`_open`), then both join.
    """

    def __init__(self, tracker: TcpTracker, access_log: TcpLog) -> None:
        super().__init__()
        self.tracker = tracker
        self.access_log = access_log
        self.loop = asyncio.get_event_loop()
        self.started = self.loop.time()
        self.client_addr = ""
        self.caller = ""
        self.service = ""
        self.upstream_address = ""
        self._tracked = False
        self._logged = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        peername = transport.get_extra_info("peername")
        self.client_addr = peername[0] if peername else ""
        refusal = self.admit()
        if refusal is not None:
            self._finish(0, 0, refusal)
            self.transport.abort()
            return
        if not self.tracker.add(self):
            self._finish(0, 0, "over-connection-limit")
            self.transport.abort()
            return
        self._tracked = True
        self.transport.pause_reading()
        Inline.start(self.open_upstream(), self._opened)

    def admit(self) -> str | None:
        """A reason word to refuse this connection before anything is dialled, or None."""
        return None

    async def open_upstream(self) -> Side:
        raise NotImplementedError

    def _opened(self, upstream: Side | None, error: BaseException | None) -> None:
        if error is not None or upstream is None:
            if isinstance(error, MeshError):
                self.tracker.connect_failures += 1
                log.warning("tcp %s: %s", self.tracker.name, error.detail)
                word = error.reason
            else:
                log.error("tcp %s: connecting failed", self.tracker.name, exc_info=error)
                word = "proxy-internal-error"
            self._finish(0, 0, word)
            if self.transport is not None and not self.lost:
                self.transport.close()
            return
        if self.lost:  # the client left while the upstream was dialled (already logged)
            if upstream.transport is not None:
                upstream.transport.close()
            self.on_finished()
            return
        Tunnel(self, upstream, self._finish).start()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.tunnel is None and self._tracked:
            # Gone before the upstream answered: `_opened` closes the upstream, if any.
            self._finish(self.received, 0, "client-gone")

    def _finish(self, up: int, down: int, error: str) -> None:
        if self._tracked:
            self.tracker.discard(self)
        if not self._logged:
            self._logged = True
            self.access_log.write(self, up, down, error)
        self.on_finished()

    def on_finished(self) -> None:
        """Subclasses release what the connection held."""

    def abort(self) -> None:
        if self.tunnel is not None:
            self.tunnel.abort()
        elif self.transport is not None and not self.lost:
            self.transport.abort()


class OutboundTcp(TcpConnection):
    """The local app's connection to a TCP upstream service."""

    def __init__(
        self, tracker: TcpTracker, access_log: TcpLog, cluster: Cluster, balancer: Balancer
    ) -> None:
        super().__init__(tracker, access_log)
        self.cluster = cluster
        self.balancer = balancer
        self.service = cluster.name
        self._state: EndpointState | None = None

    async def open_upstream(self) -> Side:
        cluster = self.cluster
        if not cluster.states:
            await first_endpoints(cluster)  # no endpoint: raises with the reason
        tried: set[EndpointState] = set()
        error: MeshError | None = None
        for _ in range(CONNECT_ATTEMPTS):
            states = [s for s in cluster.states if s not in tried] or list(cluster.states)
            if not states:
                break
            state = self.balancer.pick(states)
            tried.add(state)
            self.upstream_address = state.address
            try:
                upstream = cast(Side, await state.pool.open(Side))
            except MeshError as exc:
                if not exc.never_sent:
                    raise
                error = exc
                continue
            state.in_flight += 1
            state.requests += 1
            self._state = state
            return upstream
        if error is not None:
            raise error
        if cluster.loops:
            raise LoopDetected(f"every endpoint of {cluster.name} is this sidecar")
        raise NoEndpoints(f"no endpoints for {cluster.name}")

    def on_finished(self) -> None:
        state, self._state = self._state, None
        if state is not None:
            state.in_flight -= 1


class InboundTcp(TcpConnection):
    """A caller's connection to this sidecar's TCP app."""

    def __init__(
        self,
        tracker: TcpTracker,
        access_log: TcpLog,
        app: EndpointPool,
        service: str,
        authorizer: Callable[[], Authorizer] | None,
    ) -> None:
        super().__init__(tracker, access_log)
        self.app = app
        self.service = service
        self.upstream_address = app.label
        self.authorizer = authorizer

    def admit(self) -> str | None:
        assert self.transport is not None
        ssl_object = self.transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None  # plaintext mesh: no identity to check
        self.caller = peer_identity(ssl_object)
        if not self.caller:
            self.tracker.refused_identity += 1
            log.warning("refused a TLS peer from %s: no SPIFFE ID", self.client_addr)
            return "no-identity"
        if self.authorizer is not None:
            # The current policy (a config reload may have replaced it), once per connection.
            allowed, why = self.authorizer().decide(self.caller)
            if not allowed:
                self.tracker.denied += 1
                log.warning("denied %s -> %s (tcp): %s", self.caller, self.service, why)
                return Forbidden.reason
        return None

    async def open_upstream(self) -> Side:
        return cast(Side, await self.app.open(Side))
