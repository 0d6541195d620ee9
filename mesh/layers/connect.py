"""The innermost layer: sends the request over a pooled connection to the chosen endpoint."""

from __future__ import annotations

from mesh.cluster import EndpointState
from mesh.errors import UpstreamReset
from mesh.http1.client import request_head
from mesh.http1.message import IDEMPOTENT_METHODS, Request, Response
from mesh.tunnel import websocket


class Connect:
    async def handle(self, request: Request) -> Response:
        if request.upgrade is not None:
            return await websocket.exchange(request)  # a connection of its own, never pooled
        state: EndpointState = request.endpoint
        pool = state.pool
        if pool.h2 is not None:
            response: Response = await pool.h2.exchange(request)  # streams on shared conns
            return response
        head = request_head(request)
        conn = pool.take_idle()
        if conn is None:
            conn = await pool.connect(request.deadline)
            return await conn.exchange(head, request, request.deadline)
        try:
            return await conn.exchange(head, request, request.deadline)
        except UpstreamReset:
            # A pooled connection the upstream closed while idle fails this way before any
            # response byte; a bodiless idempotent request is safe to send once more, fresh.
            if request.body is not None or request.method not in IDEMPOTENT_METHODS:
                raise
        conn = await pool.connect(request.deadline)
        return await conn.exchange(head, request, request.deadline)
