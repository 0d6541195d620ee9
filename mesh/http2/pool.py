"""HTTP/2 connections to one endpoint: few connections, many streams each.

Attached to the endpoint's `EndpointPool` as `pool.h2` (the Connect layer then sends every
request of that endpoint here); connecting, TLS, the peer's identity and the connection cap
are the `EndpointPool`'s. A connection that got GOAWAY or died is never given a new stream.
"""

from __future__ import annotations

from typing import Any

from mesh.errors import (
    UpstreamConnectFailed,
    UpstreamProtocolError,
)
from mesh.http1.message import Request, Response
from mesh.http1.pool import EndpointPool
from mesh.http2.client import H2Client
from mesh.http2.errors import StreamRefused
from mesh.inline import Waiter


class H2Pool:
    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.connections: list[H2Client] = []
        self._connecting: list[Waiter[H2Client]] | None = None
        self.opened = 0
        self.refused_retried = 0

    def statistics(self) -> dict[str, Any]:
        return {
            "connections": len(self.connections),
            "streams": sum(len(c.flows) for c in self.connections),
            "opened": self.opened,
            "refused_retried": self.refused_retried,
        }

    def _usable(self) -> H2Client | None:
        for conn in self.connections:
            if conn.can_take():
                return conn
        return None

    async def exchange(self, request: Request) -> Response:
        conn = await self._stream_slot(request.deadline)
        try:
            return await conn.exchange(request)
        except StreamRefused:
            # Nothing was processed: a bodiless request goes once more on a fresh connection.
            if request.body is not None:
                raise
        self.refused_retried += 1
        conn = await self._stream_slot(request.deadline)
        return await conn.exchange(request)

    async def _stream_slot(self, deadline: float | None) -> H2Client:
        """A connection with room for one more stream under the peer's limit: a burst that
        fills one opens the next (as Envoy's pool does), never streams the peer refuses."""
        while True:
            conn = self._usable()
            if conn is not None:
                return conn
            conn = await self._connect(deadline)
            if conn.can_take():
                return conn
            # Requests that waited for the same connection took its streams: open another.

    async def _connect(self, deadline: float | None) -> H2Client:
        """A new connection; requests arriving while one is being opened wait for it."""
        if self._connecting is not None:
            waiter: Waiter[H2Client] = Waiter()
            self._connecting.append(waiter)
            return await waiter
        self._connecting = []
        try:
            conn = await self._open(deadline)
        except BaseException as exc:
            waiters, self._connecting = self._connecting, None
            for w in waiters:
                w.set_exception(exc)
            raise
        waiters, self._connecting = self._connecting, None
        for w in waiters:
            w.set_result(conn)
        return conn

    async def _open(self, deadline: float | None) -> H2Client:
        pool = self.pool
        scheme = b"https" if pool.tls is not None else b"http"
        conn: H2Client = await pool.open_counted(
            lambda: H2Client(pool.label, scheme, self._lost), deadline
        )
        transport = conn.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            conn.abort("no ALPN h2")
            raise UpstreamProtocolError(f"{pool.label} did not agree to HTTP/2 (ALPN)")
        if conn.closed:
            raise UpstreamConnectFailed(f"connection to {pool.label} closed at once")
        self.connections.append(conn)
        self.opened += 1
        if pool.closed:
            conn.close()
        return conn

    def _lost(self, conn: H2Client) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
        gauge, conn.gauge = conn.gauge, None
        if gauge is not None:
            gauge.release()

    def close(self) -> None:
        """The endpoint left: connections close once their streams are done."""
        for conn in list(self.connections):
            conn.going_away = True
            if not conn.flows:
                conn.close()
