"""The gateway's route table: host first, then the longest path prefix, on normalised paths.

Hosts pick a virtual host the way Envoy does: an exact name beats the longest `*.suffix`
wildcard, which beats routes for any host; within it the longest prefix wins. A prefix
matches whole segments (`/users` matches `/users`, `/users/7` and `/users;v=2`, never
`/usersettings`); a prefix ending in `/` matches anything under it. Matching is
case-insensitive unless the route says otherwise, since some upstreams treat `/ADMIN` as
`/admin`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mesh.errors import RouteNotFound
from mesh.gateway.paths import normalise_path, split_target
from mesh.http1.message import Request, Response
from mesh.layers.route import host_of
from mesh.stack import Handler


@dataclass(frozen=True)
class RouteEntry:
    name: str
    hosts: tuple[str, ...]
    prefix: bytes
    case_sensitive: bool
    handler: Handler = field(compare=False)

    def matches(self, path: bytes, folded: bytes) -> bool:
        prefix = self.prefix
        candidate = path if self.case_sensitive else folded
        if not candidate.startswith(prefix):
            return False
        if prefix.endswith(b"/") or len(candidate) == len(prefix):
            return True
        return candidate[len(prefix)] in b"/;"


class RouteTable:
    def __init__(self, entries: Sequence[RouteEntry]) -> None:
        self.exact: dict[str, list[RouteEntry]] = {}
        self.wildcards: dict[str, list[RouteEntry]] = {}
        self.any: list[RouteEntry] = []
        for entry in entries:
            for host in entry.hosts:
                if host.startswith("*."):
                    self.wildcards.setdefault(host[1:], []).append(entry)
                else:
                    self.exact.setdefault(host, []).append(entry)
            if not entry.hosts:
                self.any.append(entry)
        for group in [*self.exact.values(), *self.wildcards.values(), self.any]:
            group.sort(key=lambda e: len(e.prefix), reverse=True)
        #: Longest suffix first.
        self._suffixes = sorted(self.wildcards, key=len, reverse=True)

    def virtual_host(self, host: str) -> list[RouteEntry]:
        found = self.exact.get(host)
        if found is not None:
            return found
        for suffix in self._suffixes:
            if host.endswith(suffix) and len(host) > len(suffix):
                return self.wildcards[suffix]
        return self.any

    def match(self, host: str, path: bytes) -> RouteEntry | None:
        folded = path.lower()
        for entry in self.virtual_host(host):
            if entry.matches(path, folded):
                return entry
        return None


class GatewayRoute(Handler):
    """Normalise the path, drop headers only the gateway may set, pick the route."""

    def __init__(self, table: RouteTable, reserved_headers: frozenset[bytes]) -> None:
        self.table = table
        #: Headers the gateway sets from verified credentials (claims, API key consumer):
        #: a client's own copies never reach any upstream.
        self.reserved_headers = reserved_headers

    async def handle(self, request: Request) -> Response:
        path, query = split_target(request.target)
        path = normalise_path(path)
        request.target = path + query
        reserved = self.reserved_headers
        if reserved:
            headers = request.headers
            for name, _ in headers:
                if name in reserved:
                    request.headers = [(n, v) for n, v in headers if n not in reserved]
                    break
        host = host_of(request.authority)
        entry = self.table.match(host, path)
        if entry is None:
            raise RouteNotFound(f"no route for {host}{path.decode('latin-1')}")
        return await entry.handler.handle(request)


class PrefixRewrite(Handler):
    """Replace the matched prefix (`/users/7` with prefix `/users`, rewrite `/`: `/7`)."""

    def __init__(self, inner: Handler, prefix: str, rewrite: str) -> None:
        self.inner = inner
        self.prefix_length = len(prefix)
        self.rewrite = rewrite.encode()
        self._trim = self.rewrite.endswith(b"/")

    async def handle(self, request: Request) -> Response:
        path, query = split_target(request.target)
        rest = path[self.prefix_length :]
        if self._trim and rest.startswith(b"/"):
            rest = rest[1:]
        request.target = (self.rewrite + rest or b"/") + query
        return await self.inner.handle(request)
