"""Inbound: a SERVER span continuing the caller's context, and that context passed to the app.

The app sees this sidecar's SERVER span as its parent (as do the CLIENT attempts when the
stack behind is a gateway's routes); when it forwards the trace headers it
received on its own outgoing calls, those calls join the same trace. An unsampled request
gets no span: its context is only parsed and written back.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any

from mesh.http1.message import Request, Response
from mesh.stack import Handler
from mesh.tracing.context import new_span_id
from mesh.tracing.recorder import SERVER
from mesh.tracing.tracer import Tracer


class TraceServer(Handler):
    def __init__(self, inner: Handler, tracer: Tracer) -> None:
        self.inner = inner
        self.tracer = tracer

    def handle(self, request: Request) -> Coroutine[Any, Any, Response]:
        """Plain function returning the inner coroutine: no coroutine frame of its own."""
        tracer = self.tracer
        context = tracer.continue_or_start(request)
        context.inbound = True
        if context.sampled:
            context.span_id = context.attempt_parent = new_span_id()
            context.start_ns = time.time_ns()
            request.add_completion(self._finish)
        tracer.propagate(request, context)
        request.trace = context
        return self.inner.handle(request)

    def _finish(self, request: Request, response: Response | None, sent: int, error: str) -> None:
        context = request.trace
        self.tracer.record(
            SERVER,
            context,
            context.attempt_parent,  # this span's id (attempts behind it may move span_id)
            context.parent_id,
            context.start_ns,
            request,
            response,
            error,
            request.client_addr,
            0,
        )
