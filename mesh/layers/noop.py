"""A layer that does nothing: the benchmark inserts ten to show what a layer costs."""

from __future__ import annotations

from mesh.http1.message import Request, Response
from mesh.stack import Handler


class Noop(Handler):
    def __init__(self, inner: Handler) -> None:
        self.inner = inner

    async def handle(self, request: Request) -> Response:
        return await self.inner.handle(request)
