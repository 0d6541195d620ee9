"""The one place where errors become responses.

Every proxy-made response names its reason in `x-mesh-error`, carries a one-line text body,
and, when the condition should clear, a `Retry-After` in seconds.
"""

from __future__ import annotations

import logging

from mesh.errors import MeshError
from mesh.http1.message import Response

log = logging.getLogger("mesh.respond")

INTERNAL_REASON = "proxy-internal-error"


def error_response(exc: BaseException) -> Response:
    if isinstance(exc, MeshError):
        status, reason, detail = exc.status, exc.reason, exc.detail
    else:
        log.exception("unexpected error in the data path", exc_info=exc)
        status, reason, detail = 500, INTERNAL_REASON, "internal proxy error"
    headers = [
        (b"x-mesh-error", reason.encode()),
        (b"content-type", b"text/plain; charset=utf-8"),
    ]
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    headers.extend(getattr(exc, "headers", ()))
    text = f"{status} {reason}: {detail}\n".encode("utf-8", "replace")
    response = Response.local(status, text, headers)
    response.error_reason = reason
    return response
