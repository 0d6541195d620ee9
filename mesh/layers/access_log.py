"""One JSON line per request, written when the response has been sent (or aborted).

Header values are never logged, so Authorization and Cookie cannot leak; the query string
is dropped from the path for the same reason. Only what `access_log_fields` names is added,
with the values of sensitive names masked (`mesh.tracing.masking`). When tracing, the line
carries the trace id and this sidecar's span id, so logs join up with the traces.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from mesh.http1.message import Request, Response
from mesh.stack import Handler


class AccessLog(Handler):
    def __init__(
        self, inner: Handler, direction: str, stream: TextIO | None = None, fields: Any = None
    ) -> None:
        self.inner = inner
        #: Extra fields with masking (`mesh.tracing.masking.LogFields`), when configured.
        self.fields = fields
        self.direction = direction
        self.stream = stream or sys.stdout
        self._now: Callable[[], float] = asyncio.get_event_loop().time

    async def handle(self, request: Request) -> Response:
        request.add_completion(self._write)
        return await self.inner.handle(request)

    def _write(self, request: Request, response: Response | None, sent: int, error: str) -> None:
        endpoint = request.endpoint
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
            "request_id": request.request_id.decode("latin-1"),
            "direction": self.direction,
            "method": request.method.decode("latin-1"),
            "authority": request.authority.decode("latin-1"),
            "path": request.path.decode("latin-1"),
            "status": response.status if response is not None else 0,
            "mesh_error": (response.error_reason if response is not None else "") or error or None,
            "service": request.service or None,
            "upstream": getattr(endpoint, "address", None),
            "duration_ms": round((self._now() - request.received_at) * 1000, 3),
            "bytes_in": request.body.received if request.body is not None else 0,
            "bytes_out": sent,
            "client": request.client_addr,
        }
        trace = request.trace
        if trace is not None:
            record["trace_id"] = trace.trace_id.decode()
            record["span_id"] = trace.span_id.decode()
        if self.fields is not None:
            self.fields.add(record, request)
        self.stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.stream.flush()
