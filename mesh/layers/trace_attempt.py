"""One CLIENT span per attempt, right above the connection: it sees the endpoint chosen for
this attempt and is repeated by the Retry layer above it, so each retry is its own span
(`http.request.resend_count`), with the proxy's reason when the attempt failed.

A failed attempt's span ends when it fails (or its 5xx head, or a gRPC failure status in
the head, arrives: a retried attempt's body is never streamed); the final attempt's span
ends when its response has been sent.

`handle` is a plain function returning the coroutine to await: an unsampled request passes
with one call instead of one more coroutine frame.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any

from mesh.errors import MeshError
from mesh.grpc.outcome import retry_candidate
from mesh.http1.message import Request, Response
from mesh.respond import INTERNAL_REASON
from mesh.stack import Handler
from mesh.tracing.context import TraceContext, new_span_id
from mesh.tracing.propagation import inject, without_trace_headers
from mesh.tracing.recorder import CLIENT
from mesh.tracing.tracer import Tracer


class TraceAttempt(Handler):
    def __init__(self, inner: Handler, tracer: Tracer) -> None:
        self.inner = inner
        self.tracer = tracer

    def handle(self, request: Request) -> Coroutine[Any, Any, Response]:
        context = request.trace
        # Unsampled requests carry their headers already.
        if context is None or not context.sampled:
            return self.inner.handle(request)
        return self._attempt(request, context)

    async def _attempt(self, request: Request, context: TraceContext) -> Response:
        tracer = self.tracer
        resend = context.attempts
        context.attempts = resend + 1
        context.recorded = True
        span_id = context.span_id = new_span_id()
        headers = without_trace_headers(request.headers)
        inject(headers, context, tracer.formats)
        request.headers = headers
        endpoint = request.endpoint
        peer = endpoint.address if endpoint is not None else ""
        start = time.time_ns()
        try:
            response = await self.inner.handle(request)
        except MeshError as exc:
            context.last_error = exc.reason
            tracer.record(
                CLIENT, context, span_id, context.attempt_parent, start, request, None, exc.reason,
                peer, resend,
            )  # fmt: skip
            raise
        except Exception:
            context.last_error = INTERNAL_REASON
            tracer.record(
                CLIENT, context, span_id, context.attempt_parent, start, request, None,
                INTERNAL_REASON, peer, resend,
            )  # fmt: skip
            raise
        context.last_error = response.error_reason
        if response.status >= 500 or (request.version == b"2" and retry_candidate(response)):
            # Possibly retried (a 5xx, or a gRPC failure in the head): never streamed.
            tracer.record(
                CLIENT, context, span_id, context.attempt_parent, start, request, response, "",
                peer, resend,
            )  # fmt: skip
            return response
        parent = context.attempt_parent

        def finish(request: Request, answer: Response | None, sent: int, error: str) -> None:
            tracer.record(
                CLIENT, context, span_id, parent, start, request, answer, error, peer, resend
            )

        request.add_completion(finish)  # the final attempt: the span ends with the body
        return response
