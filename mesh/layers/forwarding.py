"""X-Forwarded-For/-Proto from the real socket, and a request id when the client sent none."""

from __future__ import annotations

import binascii
import os
from collections.abc import Coroutine
from typing import Any, Final

from mesh.http1.message import Request, Response
from mesh.stack import Handler

#: Hex digits without the `%x` formatting machinery (about a third cheaper per id).
_hexlify: Final = binascii.hexlify


class RequestIds:
    """Request ids: 32 hex digits (the shape of a W3C trace id), unique, cheap.

    A random 64-bit prefix per process and a counter: uniqueness is what an id needs, and
    formatting a small counter costs a fraction of formatting 128 fresh random bits.
    """

    def __init__(self) -> None:
        self.prefix = os.urandom(8).hex().encode()
        self.count = 0

    def next(self) -> bytes:
        self.count += 1
        return self.prefix + _hexlify(self.count.to_bytes(8, "big"))


_IDS: Final = RequestIds()


def new_request_id() -> bytes:
    return _IDS.next()


class ForwardedHeaders(Handler):
    def __init__(self, inner: Handler) -> None:
        self.inner = inner

    def handle(self, request: Request) -> Coroutine[Any, Any, Response]:
        """Nothing to do afterwards: the inner coroutine is returned, no frame of our own."""
        peer = request.client_addr.encode()
        xff = request.forwarded_for
        if not request.request_id:
            request.request_id = new_request_id()
        request.headers += (
            (b"x-forwarded-for", xff + b", " + peer if xff else peer),
            (b"x-forwarded-proto", request.scheme),
            (b"x-request-id", request.request_id),
        )
        return self.inner.handle(request)
