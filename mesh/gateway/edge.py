"""The gateway starts every trace: trace context sent by outside clients is removed before
the tracing layer can continue it, so a client cannot graft mesh spans onto its own trace,
force sampling, or collide with trace ids of others."""

from __future__ import annotations

from mesh.http1.message import Request, Response
from mesh.stack import Handler

TRACE_HEADERS = frozenset(
    {
        b"traceparent",
        b"tracestate",
        b"b3",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-parentspanid",
        b"x-b3-sampled",
        b"x-b3-flags",
        b"uber-trace-id",
    }
)


class DropClientTraceContext(Handler):
    def __init__(self, inner: Handler) -> None:
        self.inner = inner

    async def handle(self, request: Request) -> Response:
        headers = request.headers
        for name, _ in headers:
            if name in TRACE_HEADERS:
                request.headers = [(n, v) for n, v in headers if n not in TRACE_HEADERS]
                break
        return await self.inner.handle(request)
