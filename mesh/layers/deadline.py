"""Sets the overall deadline of an exchange; every wait below honours `request.deadline`.

A deadline is one float compared at the waiting points, not a timer per layer, so a request
that finishes in time pays for a single timer handle at most.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from mesh.http1.message import Request, Response
from mesh.stack import Handler


class Deadline(Handler):
    def __init__(self, inner: Handler, timeout: float) -> None:
        self.inner = inner
        self.timeout = timeout
        self._now: Callable[[], float] = asyncio.get_event_loop().time

    def handle(self, request: Request) -> Coroutine[Any, Any, Response]:
        """Nothing to do afterwards: the inner coroutine is returned, no frame of our own."""
        deadline = self._now() + self.timeout
        if request.deadline is None or deadline < request.deadline:
            request.deadline = deadline
        return self.inner.handle(request)
