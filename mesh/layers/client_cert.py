"""Inbound: tell the app who called, in Envoy's `x-forwarded-client-cert` format.

`By=<this service's SPIFFE ID>;URI=<the caller's>`; apps written for Envoy meshes read it
unchanged. Any copy a client sent was removed by the parser: only this proxy vouches.
"""

from __future__ import annotations

from mesh.http1.message import Request, Response
from mesh.stack import Handler


class ClientCertHeader(Handler):
    def __init__(self, inner: Handler, own_identity: str) -> None:
        self.inner = inner
        self._by = b"By=" + own_identity.encode() + b";URI="

    async def handle(self, request: Request) -> Response:
        if request.peer_identity:
            request.headers.append(
                (b"x-forwarded-client-cert", self._by + request.peer_identity.encode())
            )
        return await self.inner.handle(request)
