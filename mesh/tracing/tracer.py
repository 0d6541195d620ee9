"""One sidecar's tracing state, shared by its tracing layers: sampler, formats, span queue."""

from __future__ import annotations

import time
from collections.abc import Sequence

from mesh.grpc.outcome import span_status
from mesh.http1.message import Request, Response
from mesh.tracing.context import TraceContext, new_span_id, new_trace_id
from mesh.tracing.propagation import (
    DEFERRED,
    LONE_TRACEPARENT,
    TRACECONTEXT,
    W3C_FORMATS,
    Incoming,
    extract,
    inject,
    without_trace_headers,
)
from mesh.tracing.recorder import SpanQueue
from mesh.tracing.sampling import Decide, Sampler


class Tracer:
    def __init__(self, sampler: Sampler, formats: Sequence[str], queue: SpanQueue) -> None:
        self.decide = Decide(sampler)
        self.formats = tuple(formats)
        self.w3c_only = self.formats in (W3C_FORMATS, (TRACECONTEXT,))
        self.queue = queue

    def continue_or_start(self, request: Request) -> TraceContext:
        """The request's context with this sidecar's sampling decision; its trace headers
        are removed from `request.headers` (the layers write them back)."""
        incoming, found = extract(request.headers)
        context = self.context_for(incoming)
        if found:
            if (
                found == LONE_TRACEPARENT
                and incoming is not None
                and incoming.sampled == 0
                and not context.sampled
                and self.w3c_only
            ):
                # The common unsampled hop: the caller's traceparent passes on unchanged.
                context.kept = True
            else:
                request.headers = without_trace_headers(request.headers)
        return context

    def context_for(self, incoming: Incoming | None) -> TraceContext:
        if incoming is None or not incoming.trace_id:
            trace_id, low = new_trace_id()
            parent_sampled = DEFERRED if incoming is None else incoming.sampled
            return TraceContext(trace_id, b"", self.decide(parent_sampled, low))
        decide = self.decide
        sampled = incoming.sampled
        if decide.parent_based and sampled != DEFERRED:
            keep = sampled == 1  # the caller decided: no need to read the trace id
        else:
            keep = decide(sampled, int(incoming.trace_id[16:], 16))
        return TraceContext(
            incoming.trace_id,
            incoming.span_id,
            keep,
            incoming.tracestate,
            incoming.baggage,
        )

    def propagate(self, request: Request, context: TraceContext) -> None:
        """Write the context's headers; an unsampled request without a parent still gets a
        span id, so the next hop has a well-formed context to follow."""
        if context.kept:
            return
        if not context.span_id:
            context.span_id = new_span_id()
        inject(request.headers, context, self.formats)

    def record(
        self,
        kind: str,
        context: TraceContext,
        span_id: bytes,
        parent_id: bytes,
        start_ns: int,
        request: Request,
        response: Response | None,
        error: str,
        peer: str,
        resend: int,
    ) -> None:
        status = response.status if response is not None else 0
        if response is not None and response.error_reason:
            error = response.error_reason
        grpc = span_status(request, response, error) if request.version == b"2" else -1
        self.queue.put(
            (
                kind,
                context.trace_id,
                span_id,
                parent_id,
                start_ns,
                time.time_ns(),
                request.method,
                request.target,
                request.authority,
                status,
                error,
                peer,
                resend,
                request.scheme,
                context.tracestate,
                request.service,
                grpc,
            )
        )
