"""The one place where errors become responses.

Every proxy-made response names its reason in `x-mesh-error`, carries a one-line text body,
and, when the condition should clear, a `Retry-After` in seconds. A gRPC request gets the
same failure gRPC-shaped instead (`mesh.grpc.wire.trailers_only`): HTTP 200 with
`grpc-status` and `grpc-message`, so a gRPC client sees a proper status.
"""

from __future__ import annotations

import logging

from mesh.errors import MeshError
from mesh.grpc.status import code_for_reason
from mesh.grpc.wire import is_grpc_request, trailers_only
from mesh.http1.message import Request, Response

log = logging.getLogger("mesh.respond")

INTERNAL_REASON = "proxy-internal-error"


def error_response(exc: BaseException, request: Request | None = None) -> Response:
    """The answer for `exc`; `request` (when known) decides its shape: HTTP or gRPC."""
    if isinstance(exc, MeshError):
        status, reason, detail = exc.status, exc.reason, exc.detail
    else:
        log.exception("unexpected error in the data path", exc_info=exc)
        status, reason, detail = 500, INTERNAL_REASON, "internal proxy error"
    headers = [(b"x-mesh-error", reason.encode())]
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    headers.extend(getattr(exc, "headers", ()))
    if request is not None and is_grpc_request(request):
        response = trailers_only(code_for_reason(reason, status), f"{reason}: {detail}", headers)
    else:
        headers.insert(1, (b"content-type", b"text/plain; charset=utf-8"))
        text = f"{status} {reason}: {detail}\n".encode("utf-8", "replace")
        response = Response.local(status, text, headers)
    response.error_reason = reason
    return response
