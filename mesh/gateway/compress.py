"""Compress responses the client accepts compressed: brotli or gzip, once.

A response is left as it is when it already has a Content-Encoding (never twice), is a
HEAD/204/304/206 answer, says `Cache-Control: no-transform`, is of a type that does not
shrink, or is known to be smaller than `min_bytes`. Otherwise it gets `Content-Encoding`,
`Vary: Accept-Encoding`, a weak ETag (the bytes changed), and streams compressed.
"""

from __future__ import annotations

import zlib
from typing import Any

from mesh.gateway.bodies import transformed
from mesh.gateway.config import CompressionConfig
from mesh.gateway.headers import get_header, tokens
from mesh.http1.message import Request, Response
from mesh.stack import Handler

try:  # brotli is optional at run time: without it, gzip only
    import brotli
except ImportError:  # pragma: no cover
    brotli = None


class _Gzip:
    def __init__(self, level: int) -> None:
        # wbits 31: the gzip container (RFC 1952), not a bare zlib stream.
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)

    def chunk(self, data: bytes) -> bytes:
        # A sync flush per piece keeps a streamed response moving (an event stream must
        # not wait for 64 KiB to pile up); it costs a few bytes per piece.
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class _Brotli:
    def __init__(self, quality: int) -> None:
        self._c: Any = brotli.Compressor(quality=quality)

    def chunk(self, data: bytes) -> bytes:
        return bytes(self._c.process(data)) + bytes(self._c.flush())

    def finish(self) -> bytes:
        return bytes(self._c.finish())


def choose_encoding(accept: bytes | None, brotli_available: bool) -> bytes | None:
    """The coding to use for this Accept-Encoding: br, then gzip; None for neither."""
    if not accept:
        return None
    accepted: dict[bytes, float] = {}
    for item in accept.split(b","):
        name, _, params = item.strip().partition(b";")
        q = 1.0
        for param in params.split(b";"):
            key, _, value = param.strip().partition(b"=")
            if key.strip().lower() == b"q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        accepted[name.strip().lower()] = q
    star = accepted.get(b"*", 0.0)
    for coding in (b"br", b"gzip") if brotli_available else (b"gzip",):
        if accepted.get(coding, star) > 0:
            return coding
    return None


class Compress(Handler):
    def __init__(self, inner: Handler, policy: CompressionConfig) -> None:
        self.inner = inner
        self.policy = policy
        self.types = frozenset(t.encode() for t in policy.types)
        self.brotli = brotli is not None

    async def handle(self, request: Request) -> Response:
        coding = choose_encoding(request.header(b"accept-encoding"), self.brotli)
        response = await self.inner.handle(request)
        if coding is None or not self._compressible(request, response):
            return response
        assert response.body is not None
        transform = (
            _Brotli(self.policy.brotli_quality)
            if coding == b"br"
            else _Gzip(self.policy.gzip_level)
        )
        headers = []
        vary_done = False
        for name, value in response.headers:
            if name == b"etag" and not value.startswith(b"W/"):
                value = b"W/" + value
            elif name == b"vary":
                if b"accept-encoding" not in tokens(value) and b"*" not in tokens(value):
                    value = value + b", Accept-Encoding"
                vary_done = True
            headers.append((name, value))
        if not vary_done:
            headers.append((b"vary", b"Accept-Encoding"))
        headers.append((b"content-encoding", coding))
        body = transformed(response.body, transform)
        response.headers = headers
        response.body = body
        response.content_length = body.received if body.at_eof else None
        return response

    def _compressible(self, request: Request, response: Response) -> bool:
        if response.body is None or request.method == b"HEAD":
            return False
        if response.status < 200 or response.status in (204, 206, 304):
            return False
        length = response.content_length
        if length is not None and length < self.policy.min_bytes:
            return False
        headers = response.headers
        encoding = get_header(headers, b"content-encoding")
        if encoding is not None and encoding.strip().lower() != b"identity":
            return False
        if b"no-transform" in tokens(get_header(headers, b"cache-control")):
            return False
        media = (get_header(headers, b"content-type") or b"").split(b";", 1)[0].strip().lower()
        return (
            media.startswith(b"text/") or media in self.types or media.endswith((b"+json", b"+xml"))
        )
