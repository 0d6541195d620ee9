"""Inbound: tell the app who called, in Envoy's `x-forwarded-client-cert` format.

`By=<this service's SPIFFE ID>;URI=<the caller's>`; apps written for Envoy meshes read it
unchanged. Any copy a client sent was removed by the parser: only this proxy vouches.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from mesh.http1.message import Request, Response
from mesh.stack import Handler


class ClientCertHeader(Handler):
    def __init__(self, inner: Handler, own_identity: str) -> None:
        self.inner = inner
        self._by = b"By=" + own_identity.encode() + b";URI="

    def handle(self, request: Request) -> Coroutine[Any, Any, Response]:
        """Nothing to do afterwards: the inner coroutine is returned, no frame of our own."""
        if request.peer_identity:
            request.headers.append(
                (b"x-forwarded-client-cert", self._by + request.peer_identity.encode())
            )
        return self.inner.handle(request)
