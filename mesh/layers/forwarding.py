"""X-Forwarded-For/-Proto from the real socket, and a request id when the client sent none."""

from __future__ import annotations

from random import getrandbits

from mesh.http1.message import Request, Response
from mesh.stack import Handler


def new_request_id() -> bytes:
    """128 random bits as 32 hex digits (the shape of a W3C trace id)."""
    return b"%032x" % getrandbits(128)


class ForwardedHeaders:
    def __init__(self, inner: Handler) -> None:
        self.inner = inner

    async def handle(self, request: Request) -> Response:
        peer = request.client_addr.encode()
        xff = request.forwarded_for
        if not request.request_id:
            request.request_id = new_request_id()
        request.headers += (
            (b"x-forwarded-for", xff + b", " + peer if xff else peer),
            (b"x-forwarded-proto", request.scheme),
            (b"x-request-id", request.request_id),
        )
        return await self.inner.handle(request)
