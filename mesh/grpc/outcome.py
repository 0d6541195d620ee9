"""When a gRPC call's status becomes known, and what the resilience layers make of it.

A gRPC call is answered with HTTP 200 however it went: its status is `grpc-status`, in the
head of a trailers-only answer or in the trailers once the body has ended. Breakers and
outlier detection count UNAVAILABLE, INTERNAL, UNKNOWN, DEADLINE_EXCEEDED (and DATA_LOSS)
as failures of the endpoint; the retry layer looks at trailers-only failures (a streamed
answer has been forwarded by the time its trailers come, too late to try again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mesh.grpc.status import StatusCode, code_for_reason, is_failure, name
from mesh.grpc.wire import head_status, is_grpc, is_grpc_request, status_in, trailer_status
from mesh.http1.message import Request, Response
from mesh.resilience.outlier import OutlierDetector


def retry_candidate(response: Response) -> bool:
    """A trailers-only gRPC failure, or a peer proxy's gRPC-shaped refusal: worth asking
    the retry rules about (a 5xx is asked about anyway)."""
    headers = response.headers
    if response.status != 200 or not is_grpc(headers):
        return False
    code = status_in(headers)
    if code is None:
        return False
    return is_failure(code) or any(field == b"x-mesh-error" for field, _ in headers)


def when_status_known(request: Request, response: Response, report: Callable[[int], None]) -> bool:
    """Call `report(code)` once the call's status is known: now when the head says it, else
    when the body ends (its trailers, or UNKNOWN if it broke). False, and no call, when the
    request is not gRPC."""
    if not is_grpc_request(request):
        return False
    code = head_status(response)
    body = response.body
    if code is not None or body is None or body.at_eof or body.failed:
        report(trailer_status(body) if code is None else code)
        return True
    before = body.on_end

    def ended() -> None:
        report(trailer_status(body))
        if before is not None:
            before()

    body.on_end = ended
    return True


def record_endpoint_outcome(
    detector: OutlierDetector[Any], state: Any, ticket: int, request: Request, response: Response
) -> None:
    """Tell the endpoint's breaker how the attempt went (`OutlierDetector.record`), by the
    gRPC status for a gRPC call, else by the HTTP status."""

    def report(code: int) -> None:
        detector.record(state, ticket, is_failure(code))

    if not when_status_known(request, response, report):
        detector.record(state, ticket, response.status >= 500)


def count_status(counts: dict[str, int], request: Request, response: Response) -> None:
    """Add the call's status, once known, to `counts` (by code name: at most 17 keys)."""

    def report(code: int) -> None:
        label = name(code)
        counts[label] = counts.get(label, 0) + 1

    when_status_known(request, response, report)


def count_failure(counts: dict[str, int], request: Request, reason: str, status: int) -> None:
    """Add a proxy-made failure of a gRPC call, by the code its client will see."""
    if is_grpc_request(request):
        label = name(code_for_reason(reason, status))
        counts[label] = counts.get(label, 0) + 1


def span_status(request: Request, response: Response | None, error: str) -> int:
    """The gRPC status a span records (-1: not a gRPC call). Spans end after the body, so a
    streamed call's trailers are there by then."""
    if not is_grpc_request(request):
        return -1
    if response is None:
        return code_for_reason(error, 0) if error else StatusCode.UNKNOWN
    code = head_status(response)
    return trailer_status(response.body) if code is None else code
