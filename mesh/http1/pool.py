"""Keep-alive connections to one endpoint, reused last-in first-out.

LIFO keeps a few connections hot and lets the rest age out; idle ones older than the
policy's idle timeout are closed lazily on the next release, so the pool needs no timer.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, cast

from mypy_extensions import mypyc_attr

from mesh.errors import (
    ConnectionLimit,
    PeerIdentityMismatch,
    UpstreamConnectFailed,
    UpstreamTimeout,
    UpstreamTlsFailed,
)
from mesh.http1.client import UpstreamConnection, as_protocol
from mesh.identity.spiffe import peer_identity
from mesh.policy import PoolPolicy
from mesh.resilience.limits import ResourceGauge


@mypyc_attr(allow_interpreted_subclasses=True)  # bench/hotpath.py plays the network
class EndpointPool:
    def __init__(
        self,
        host: str,
        port: int,
        policy: PoolPolicy,
        connect_timeout: float,
        tls: Callable[[], ssl.SSLContext] | None = None,
        identity: str = "",
    ) -> None:
        self.host = host
        self.port = port
        self.label = f"{host}:{port}"
        self.policy = policy
        #: Read on every release: copied out of the (interpreted) policy dataclass.
        self._max_idle = policy.max_idle
        self._idle_timeout = policy.idle_timeout
        self.connect_timeout = connect_timeout
        #: The current client TLS context (it rotates), or None for plaintext.
        self.tls = tls
        #: The SPIFFE ID the peer must prove over TLS.
        self.identity = identity
        self.tls_failures = 0
        self.identity_mismatches = 0
        self._idle: list[UpstreamConnection] = []
        self._all: set[UpstreamConnection] = set()
        self.connecting = 0
        self.opened = 0
        self.connect_failures = 0
        self.protocol_errors = 0
        self.closed = False
        #: The upstream's connection cap, shared by the pools of all its endpoints.
        self.connection_gauge: ResourceGauge | None = None
        #: An `mesh.http2.pool.H2Pool` when this endpoint is spoken to over HTTP/2.
        self.h2: Any = None

    def __repr__(self) -> str:
        return (
            f"<EndpointPool {self.label} idle={len(self._idle)} "
            f"busy={len(self._all) - len(self._idle)} connecting={self.connecting}>"
        )

    def statistics(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "idle": len(self._idle),
            "busy": len(self._all) - len(self._idle),
            "connecting": self.connecting,
            "opened": self.opened,
            "connect_failures": self.connect_failures,
            "protocol_errors": self.protocol_errors,
            "tls_failures": self.tls_failures,
            "identity_mismatches": self.identity_mismatches,
        }
        if self.h2 is not None:
            stats["http2"] = self.h2.statistics()
        return stats

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled connection ready for one exchange, or None (then `connect()`)."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self, deadline: float | None = None) -> UpstreamConnection:
        """A new pooled HTTP/1.1 connection (see `open_counted`)."""
        conn = cast(
            UpstreamConnection, await self.open_counted(lambda: UpstreamConnection(self), deadline)
        )
        self._all.add(conn)  # from here `forget` gives its slot back when it closes
        if self.closed:
            conn.abort()
            raise UpstreamConnectFailed(f"endpoint {self.label} was removed")
        return conn

    async def open_counted(self, factory: Callable[[], Any], deadline: float | None) -> Any:
        """A new connection (protocol made by `factory`) counted against the upstream's
        connection cap, its slot in `conn.gauge`; a `deadline` (loop time) sooner than the
        connect timeout ends the attempt then, as `upstream-timeout`: the caller's time is
        up, not the peer's."""
        gauge = self.connection_gauge
        if gauge is not None and not gauge.try_acquire():
            raise ConnectionLimit(f"{gauge.limit} connections open to this upstream")
        timeout = self.connect_timeout
        cut_by_deadline = False
        if deadline is not None:
            left = deadline - asyncio.get_running_loop().time()
            if left < timeout:
                timeout = left if left > 0.0 else 0.0
                cut_by_deadline = True
        try:
            conn = await self.open(factory, timeout)
        except UpstreamConnectFailed as exc:
            if gauge is not None:
                gauge.release()
            if cut_by_deadline and exc.timed_out:
                raise UpstreamTimeout(f"deadline passed while connecting to {self.label}") from None
            raise
        except BaseException:
            if gauge is not None:
                gauge.release()
            raise
        conn.gauge = gauge
        return conn

    async def open(self, factory: Callable[[], Any], within: float | None = None) -> Any:
        """A new connection to the endpoint, its protocol made by `factory`: connect timeout
        (or `within` seconds), TLS and the peer's identity checked. `connect()` makes pooled
        HTTP/1.1 connections with it; tunnels (WebSocket, TCP) make unpooled ones with a
        protocol of their own."""
        if within is None:
            within = self.connect_timeout
        loop = asyncio.get_running_loop()
        self.connecting += 1
        # A task per new connection (not per request): the data path runs without a current
        # task, so the timeout cancels this task rather than using asyncio.timeout().
        context = self.tls() if self.tls is not None else None
        connecting = asyncio.ensure_future(
            loop.create_connection(
                lambda: as_protocol(factory()),
                self.host,
                self.port,
                ssl=context,
                # SNI is informational here: peers are checked by SPIFFE ID below.
                server_hostname="mesh" if context is not None else None,
                ssl_handshake_timeout=max(within, 0.001) if context is not None else None,
            )
        )
        timer = loop.call_later(within, connecting.cancel)
        try:
            transport, protocol = await connecting
        except asyncio.CancelledError:
            if not connecting.cancelled():
                raise
            self.connect_failures += 1
            raise UpstreamConnectFailed(
                f"connect to {self.label} timed out after {within:g}s", timed_out=True
            ) from None
        except TimeoutError:
            self.connect_failures += 1
            raise UpstreamConnectFailed(
                f"connect to {self.label} timed out after {within:g}s", timed_out=True
            ) from None
        except ssl.SSLError as exc:
            self.tls_failures += 1
            raise UpstreamTlsFailed(f"TLS with {self.label} failed: {exc.reason or exc}") from None
        except ConnectionResetError as exc:
            # A plaintext server resets or closes on a ClientHello: that is a TLS failure.
            if context is None:
                self.connect_failures += 1
                raise UpstreamConnectFailed(f"connect to {self.label} failed: {exc}") from None
            self.tls_failures += 1
            raise UpstreamTlsFailed(f"TLS with {self.label} failed: {exc}") from None
        except OSError as exc:
            self.connect_failures += 1
            raise UpstreamConnectFailed(
                f"connect to {self.label} failed: {exc.strerror or exc}"
            ) from None
        finally:
            timer.cancel()
            self.connecting -= 1
        if context is not None:
            proved = peer_identity(transport.get_extra_info("ssl_object"))
            if proved != self.identity:
                # Nothing has been written: the request never reaches the wrong peer.
                transport.abort()
                self.identity_mismatches += 1
                raise PeerIdentityMismatch(
                    f"{self.label} proved {proved or 'no identity'!r}, "
                    f"discovery expects {self.identity!r}"
                )
        self.opened += 1
        return protocol

    def release(self, conn: UpstreamConnection) -> None:
        if self.closed or len(self._idle) >= self._max_idle:
            conn.abort()
            return
        idle = self._idle
        if idle and conn.idle_since - idle[0].idle_since > self._idle_timeout:
            idle.pop(0).abort()
        idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self._all:
            self._all.discard(conn)
            gauge = conn.gauge
            if gauge is not None:
                conn.gauge = None
                gauge.release()
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        """Stop pooling: idle connections close now, busy ones when their exchange ends."""
        self.closed = True
        if self.h2 is not None:
            self.h2.close()
        for conn in self._idle:
            conn.abort()
        self._idle.clear()
