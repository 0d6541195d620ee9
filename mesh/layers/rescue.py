"""Outermost layer: any failure below becomes a response (through `mesh.respond`)."""

from __future__ import annotations

from mesh.http1.message import Request, Response
from mesh.respond import error_response
from mesh.stack import Handler


class Rescue(Handler):
    def __init__(self, inner: Handler) -> None:
        self.inner = inner

    async def handle(self, request: Request) -> Response:
        try:
            return await self.inner.handle(request)
        except Exception as exc:
            return error_response(exc, request)
