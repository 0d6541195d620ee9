"""The innermost layer: sends the request over a pooled connection to the chosen endpoint."""

from __future__ import annotations

from mesh.cluster import EndpointState
from mesh.errors import UpstreamReset
from mesh.http1.client import request_head
from mesh.http1.message import IDEMPOTENT_METHODS, Request, Response


class Connect:
    async def handle(self, request: Request) -> Response:
        state: EndpointState = request.endpoint
        pool = state.pool
        head = request_head(request)
        conn, reused = await pool.acquire()
        try:
            return await conn.exchange(head, request, request.deadline)
        except UpstreamReset:
            # A pooled connection the upstream closed while idle fails this way before any
            # response byte; a bodiless idempotent request is safe to send once more, fresh.
            if not (reused and request.body is None and request.method in IDEMPOTENT_METHODS):
                raise
        conn, _ = await pool.acquire()
        return await conn.exchange(head, request, request.deadline)
