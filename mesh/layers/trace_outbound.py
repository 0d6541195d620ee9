"""Outbound edge: reads the context the app forwarded and makes the sampling decision once.

The CLIENT spans themselves are made per attempt by `TraceAttempt`, next to the connection.
When no attempt got that far (a breaker, a bulkhead, no endpoints, a refused budget: the
proxy answered itself), or the request left through passthrough, one CLIENT span is still
recorded here at completion, carrying the proxy's reason as its error; likewise when the
proxy's answer names another reason than the last attempt did (a breaker or bulkhead that
refused a retry).
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any

from mesh.http1.message import Request, Response
from mesh.stack import Handler
from mesh.tracing.context import new_span_id
from mesh.tracing.recorder import CLIENT
from mesh.tracing.tracer import Tracer


class TraceOutbound(Handler):
    def __init__(self, inner: Handler, tracer: Tracer) -> None:
        self.inner = inner
        self.tracer = tracer

    def handle(self, request: Request) -> Coroutine[Any, Any, Response]:
        """Plain function returning the inner coroutine: no coroutine frame of its own."""
        tracer = self.tracer
        context = tracer.continue_or_start(request)
        if context.sampled:
            # The id of the span recorded here if no attempt records its own.
            context.span_id = new_span_id()
            context.start_ns = time.time_ns()
            request.add_completion(self._finish)
        tracer.propagate(request, context)
        request.trace = context
        return self.inner.handle(request)

    def _finish(self, request: Request, response: Response | None, sent: int, error: str) -> None:
        context = request.trace
        reason = response.error_reason if response is not None else ""
        if context.recorded and (not reason or reason == context.last_error):
            return
        self.tracer.record(
            CLIENT,
            context,
            new_span_id() if context.recorded else context.span_id,
            context.parent_id,
            context.start_ns,
            request,
            response,
            error,
            "",
            0,
        )
