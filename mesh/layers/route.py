"""Proxy-mode routing: which upstream service a request is for, by its authority's host.

A host that is no mesh service goes to passthrough (its real destination) or is refused, as
configured. An upstream listener needs no routing: it is bound to one service's stack when
the sidecar starts.
"""

from __future__ import annotations

from typing import Protocol

from mesh.errors import PassthroughDenied
from mesh.http1.message import Request, Response
from mesh.stack import Handler


class ServiceStacks(Protocol):
    def knows(self, service: str) -> bool: ...

    def stack(self, service: str) -> Handler: ...


def host_of(authority: bytes) -> str:
    if authority.startswith(b"["):
        return authority[1 : authority.find(b"]")].decode("ascii", "replace")
    return authority.split(b":", 1)[0].decode("ascii", "replace").lower()


class Route(Handler):
    def __init__(self, services: ServiceStacks, passthrough: Handler | None = None) -> None:
        self.services = services
        self.passthrough = passthrough

    async def handle(self, request: Request) -> Response:
        host = host_of(request.authority)
        if self.services.knows(host):
            return await self.services.stack(host).handle(request)
        if self.passthrough is None:
            raise PassthroughDenied(f"{host!r} is not a mesh service and passthrough is off")
        return await self.passthrough.handle(request)
