"""A shared response cache for GET and HEAD, bounded in bytes with LRU eviction.

What is stored follows RFC 9111 for a shared cache, kept on the safe side:
- only 200/203/301/404/410 answers with a body and an explicit lifetime (`s-maxage`,
  `max-age`, or `Expires` against `Date`); no heuristic lifetimes;
- never `no-store`, `private`, `no-cache`, `Vary: *` or `Set-Cookie` answers;
- never the answer to an authenticated request (the route checks a credential, or the
  request carries Authorization) unless it says `public`;
- requests with `no-cache`/`no-store`, conditions or ranges go upstream (no-store: and are
  not stored), so the cache never has to answer 304 or 206 itself.

Variants follow `Vary`: an entry is used only for requests whose varying headers match the
ones it was stored for. Every response of a caching route says `x-cache: hit` or `miss`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from mesh.gateway.bodies import transformed
from mesh.gateway.headers import directives, get_header, tokens
from mesh.http1.body import Body
from mesh.http1.message import Headers, Request, Response
from mesh.stack import Handler

_CACHEABLE_STATUS = frozenset({200, 203, 301, 404, 410})
_BYPASS_REQUEST_HEADERS = (b"if-none-match", b"if-modified-since", b"if-match", b"range")
#: Headers of the stored answer that are per-exchange, not part of the resource.
_NOT_STORED = frozenset({b"age", b"x-cache", b"connection", b"keep-alive"})
HIT = (b"x-cache", b"hit")
MISS = (b"x-cache", b"miss")
_ENTRY_OVERHEAD = 256


@dataclass
class Entry:
    status: int
    headers: Headers
    body: bytes
    stored_at: float
    expires_at: float
    #: Age the response already had when it arrived (its Age header).
    initial_age: float
    size: int


Primary = tuple[bytes, bytes]


@dataclass
class Variants:
    """The stored answers for one (host, target), one per value set of its Vary headers."""

    vary: tuple[bytes, ...]
    entries: dict[tuple[bytes, ...], Entry]
    size: int = 0


class ResponseStore:
    """Answers by (host, target), then by the values of their Vary headers; the least
    recently used (host, target) goes first when `max_bytes` would be exceeded."""

    def __init__(self, max_bytes: int, max_entry_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self._lru: OrderedDict[Primary, Variants] = OrderedDict()
        self.size = 0
        self.hits = self.misses = self.stores = self.evictions = 0

    def statistics(self) -> dict[str, int]:
        return {
            "resources": len(self._lru),
            "bytes": self.size,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "stores": self.stores,
            "evictions": self.evictions,
        }

    def lookup(
        self, host: bytes, target: bytes, request_headers: Headers, now: float
    ) -> Entry | None:
        primary = (host, target)
        variants = self._lru.get(primary)
        if variants is None:
            return None
        values = tuple(_vary_value(request_headers, n) for n in variants.vary)
        entry = variants.entries.get(values)
        if entry is None:
            return None
        if now >= entry.expires_at:
            del variants.entries[values]
            variants.size -= entry.size
            self.size -= entry.size
            return None
        self._lru.move_to_end(primary)
        return entry

    def store(
        self,
        host: bytes,
        target: bytes,
        vary: tuple[bytes, ...],
        request_headers: Headers,
        entry: Entry,
    ) -> None:
        if entry.size > self.max_entry_bytes:
            return
        primary = (host, target)
        variants = self._lru.get(primary)
        if variants is None or variants.vary != vary:
            if variants is not None:
                self.size -= variants.size
            variants = self._lru[primary] = Variants(vary, {})
        values = tuple(_vary_value(request_headers, n) for n in vary)
        old = variants.entries.pop(values, None)
        if old is not None:
            variants.size -= old.size
            self.size -= old.size
        variants.entries[values] = entry
        variants.size += entry.size
        self.size += entry.size
        self._lru.move_to_end(primary)
        self.stores += 1
        while self.size > self.max_bytes and self._lru:
            _, evicted = self._lru.popitem(last=False)
            self.size -= evicted.size
            self.evictions += 1


def _vary_value(headers: Headers, name: bytes) -> bytes:
    value = get_header(headers, name)
    return b"" if value is None else b",".join(tokens(value))


def freshness(headers: Headers, now_wall: float) -> float | None:
    """Seconds the response stays fresh (explicit lifetimes only), or None."""
    cc = directives(get_header(headers, b"cache-control"))
    for name in (b"s-maxage", b"max-age"):
        if name in cc:
            try:
                return max(0.0, float(int(cc[name])))
            except ValueError:
                return None
    expires = get_header(headers, b"expires")
    if expires is None:
        return None
    try:
        expires_at = parsedate_to_datetime(expires.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError):
        return 0.0  # an invalid Expires means "already expired" (RFC 9111 §5.3)
    date = get_header(headers, b"date")
    base = now_wall
    if date is not None:
        with contextlib.suppress(TypeError, ValueError, IndexError):
            base = parsedate_to_datetime(date.decode("latin-1")).timestamp()
    return max(0.0, expires_at - base)


class Cache(Handler):
    def __init__(self, inner: Handler, store: ResponseStore, authenticated_route: bool) -> None:
        self.inner = inner
        self.store = store
        self.authenticated_route = authenticated_route
        self._loop = asyncio.get_event_loop()

    async def handle(self, request: Request) -> Response:
        method = request.method
        if method != b"GET" and method != b"HEAD":
            return await self.inner.handle(request)
        headers = request.headers
        request_cc = directives(get_header(headers, b"cache-control"))
        bypass = (
            b"no-cache" in request_cc
            or b"no-store" in request_cc
            or any(get_header(headers, n) is not None for n in _BYPASS_REQUEST_HEADERS)
        )
        host, target = request.authority.lower(), request.target
        now = self._loop.time()
        if not bypass:
            entry = self.store.lookup(host, target, headers, now)
            if entry is not None:
                self.store.hits += 1
                return _from_entry(entry, now)
        self.store.misses += 1
        response = await self.inner.handle(request)
        if method == b"GET" and b"no-store" not in request_cc:
            self._maybe_store(request, response, host, target, now)
        response.headers.append(MISS)
        return response

    def _maybe_store(
        self, request: Request, response: Response, host: bytes, target: bytes, now: float
    ) -> None:
        if response.status not in _CACHEABLE_STATUS or response.body is None:
            return
        if response.error_reason:
            return  # the gateway's own answers are never cached
        headers = response.headers
        cc = directives(get_header(headers, b"cache-control"))
        if b"no-store" in cc or b"private" in cc or b"no-cache" in cc:
            return
        authenticated = self.authenticated_route or request.header(b"authorization") is not None
        if authenticated and b"public" not in cc:
            return
        if get_header(headers, b"set-cookie") is not None:
            return
        vary = tuple(tokens(get_header(headers, b"vary")))
        if b"*" in vary:
            return
        lifetime = freshness(headers, time.time())
        if not lifetime:
            return
        length = response.content_length
        if length is not None and length > self.store.max_entry_bytes:
            return
        try:
            initial_age = float(int(get_header(headers, b"age") or b"0"))
        except ValueError:
            initial_age = 0.0
        if initial_age >= lifetime:
            return
        kept = [(n, v) for n, v in headers if n not in _NOT_STORED]
        request_headers = list(request.headers)
        status, store, limit = response.status, self.store, self.store.max_entry_bytes

        def stored(body: bytes) -> None:
            size = len(body) + sum(len(n) + len(v) for n, v in kept) + _ENTRY_OVERHEAD
            entry = Entry(status, kept, body, now, now + lifetime - initial_age, initial_age, size)
            store.store(host, target, vary, request_headers, entry)

        response.body = transformed(response.body, _Copy(limit, stored))


class _Copy:
    """Passes the body through and keeps a copy; stores it if it ends whole and small."""

    def __init__(self, limit: int, on_complete: Callable[[bytes], None]) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.on_complete = on_complete

    def chunk(self, data: bytes) -> bytes:
        if self.size <= self.limit:
            self.size += len(data)
            if self.size <= self.limit:
                self.parts.append(data)
            else:
                self.parts.clear()
        return data

    def finish(self) -> bytes:
        if self.size <= self.limit:
            self.on_complete(b"".join(self.parts))
        return b""


def _from_entry(entry: Entry, now: float) -> Response:
    age = int(entry.initial_age + (now - entry.stored_at))
    headers = [*entry.headers, (b"age", b"%d" % age), HIT]
    return Response(entry.status, headers, Body.complete(entry.body), len(entry.body))
