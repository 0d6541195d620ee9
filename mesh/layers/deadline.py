"""Sets the overall deadline of an exchange; every wait below honours `request.deadline`.

A deadline is one float compared at the waiting points, not a timer per layer, so a request
that finishes in time pays for a single timer handle at most. An HTTP/2 request's
`grpc-timeout` bounds it too (`mesh.grpc.deadline`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from mesh.grpc.deadline import bound_by_grpc_timeout
from mesh.http1.message import Request, Response
from mesh.stack import Handler


class Deadline(Handler):
    def __init__(self, inner: Handler, timeout: float) -> None:
        self.inner = inner
        self.timeout = timeout
        self._now: Callable[[], float] = asyncio.get_event_loop().time

    def handle(self, request: Request) -> Coroutine[Any, Any, Response]:
        """Nothing to do afterwards: the inner coroutine is returned, no frame of our own."""
        now = self._now()
        deadline = now + self.timeout
        if request.deadline is None or deadline < request.deadline:
            request.deadline = deadline
        if request.version == b"2":  # gRPC rides HTTP/2 only
            bound_by_grpc_timeout(request, now)
        return self.inner.handle(request)
