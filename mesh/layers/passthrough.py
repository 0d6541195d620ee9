"""Proxy-mode passthrough: a host that is not a mesh service goes to its real address.

This keeps an attached app's calls to the outside world working. Destinations get pools of
their own, capped in number (least recently used are closed first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from discovery.endpoint import Endpoint
from mesh.cluster import EndpointState, PoolFactory
from mesh.errors import BadRequest, LoopDetected, NotImplementedByProxy
from mesh.http1.message import Request, Response
from mesh.stack import Handler


def split_authority(authority: bytes, default_port: int) -> tuple[str, int]:
    text = authority.decode("ascii", "replace")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.partition(":")
    if port and not port.isdigit():
        raise BadRequest(f"bad port in {text!r}")
    return host, int(port) if port else default_port


class Passthrough(Handler):
    def __init__(
        self,
        inner: Handler,
        pool_factory: PoolFactory,
        is_self: Callable[[Endpoint], bool],
        max_destinations: int = 256,
    ) -> None:
        self.inner = inner
        self._pool_factory = pool_factory
        self._is_self = is_self
        self._max = max_destinations
        self._states: OrderedDict[tuple[str, int], EndpointState] = OrderedDict()

    async def handle(self, request: Request) -> Response:
        if request.scheme != b"http":
            raise NotImplementedByProxy("only plain-HTTP destinations pass through the proxy")
        host, port = split_authority(request.authority, 80)
        if not host:
            raise BadRequest("no destination host")
        key = (host, port)
        state = self._states.get(key)
        if state is None:
            endpoint = Endpoint(host, port)
            if self._is_self(endpoint):
                raise LoopDetected(f"{endpoint.address} is this sidecar")
            state = EndpointState(endpoint, self._pool_factory(endpoint))
            self._states[key] = state
            if len(self._states) > self._max:
                _, oldest = self._states.popitem(last=False)
                oldest.pool.close()
        else:
            self._states.move_to_end(key)
        request.endpoint = state
        request.service = ""
        return await self.inner.handle(request)
