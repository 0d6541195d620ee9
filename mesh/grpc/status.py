"""gRPC status codes and how the mesh's failures and HTTP answers map onto them.

The codes and the HTTP table follow grpc/doc/statuscodes.md and
grpc/doc/http-grpc-status-mapping.md. Each of the proxy's `x-mesh-error` words (mesh/errors.py)
gets the code a gRPC client should act on: UNAVAILABLE where trying again (elsewhere, later)
may work, DEADLINE_EXCEEDED for timeouts, RESOURCE_EXHAUSTED for the proxy's own limits.
"""

from __future__ import annotations

from enum import IntEnum


class StatusCode(IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


#: The code of each proxy-made failure, by its `x-mesh-error` word.
REASON_CODES: dict[str, StatusCode] = {
    "bad-request": StatusCode.INTERNAL,
    "not-implemented": StatusCode.UNIMPLEMENTED,
    "passthrough-denied": StatusCode.PERMISSION_DENIED,
    "forbidden": StatusCode.PERMISSION_DENIED,
    "request-timeout": StatusCode.DEADLINE_EXCEEDED,
    "body-too-large": StatusCode.RESOURCE_EXHAUSTED,
    "headers-too-large": StatusCode.RESOURCE_EXHAUSTED,
    "no-endpoints": StatusCode.UNAVAILABLE,
    "upstream-connect-failed": StatusCode.UNAVAILABLE,
    "upstream-reset": StatusCode.UNAVAILABLE,
    "upstream-protocol-error": StatusCode.INTERNAL,
    "upstream-timeout": StatusCode.DEADLINE_EXCEEDED,
    "upstream-tls-failed": StatusCode.UNAVAILABLE,
    "peer-identity-mismatch": StatusCode.UNAVAILABLE,
    "loop-detected": StatusCode.INTERNAL,
    "draining": StatusCode.UNAVAILABLE,
    "circuit-open": StatusCode.UNAVAILABLE,
    "all-endpoints-ejected": StatusCode.UNAVAILABLE,
    "retry-budget-exhausted": StatusCode.UNAVAILABLE,
    "bulkhead-full": StatusCode.RESOURCE_EXHAUSTED,
    "connection-limit": StatusCode.RESOURCE_EXHAUSTED,
    "unauthenticated": StatusCode.UNAUTHENTICATED,
    "rate-limited": StatusCode.RESOURCE_EXHAUSTED,
    "route-not-found": StatusCode.UNIMPLEMENTED,
    "proxy-internal-error": StatusCode.INTERNAL,
}

#: HTTP status of a non-gRPC answer -> the code a gRPC client sees (all others: UNKNOWN).
HTTP_CODES: dict[int, StatusCode] = {
    400: StatusCode.INTERNAL,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.UNIMPLEMENTED,
    429: StatusCode.UNAVAILABLE,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.UNAVAILABLE,
}

#: Codes that say the server (or the way to it) failed: they count against an endpoint's
#: breaker and outlier state, and as errors in spans. Client-side codes (INVALID_ARGUMENT,
#: NOT_FOUND, PERMISSION_DENIED...) are answers, not failures.
FAILURE_CODES = frozenset(
    {
        StatusCode.UNKNOWN,
        StatusCode.DEADLINE_EXCEEDED,
        StatusCode.INTERNAL,
        StatusCode.UNAVAILABLE,
        StatusCode.DATA_LOSS,
    }
)

#: Codes a retry may cure: the call was not processed (gRPC's transparent-retry guidance).
RETRYABLE_CODES = frozenset({StatusCode.UNAVAILABLE})


def code_for_http_status(status: int) -> StatusCode:
    """The code for an answer that is not gRPC (grpc/doc/http-grpc-status-mapping.md)."""
    if status == 200:
        return StatusCode.UNKNOWN  # a 200 without grpc-status is a broken gRPC answer
    return HTTP_CODES.get(status, StatusCode.UNKNOWN)


def code_for_reason(reason: str, status: int) -> StatusCode:
    """The code for a proxy-made failure: by its word, else by its HTTP status (words that
    other modules add, or a fault injected with a chosen status)."""
    code = REASON_CODES.get(reason)
    if code is None or reason == "fault-injected":
        return code_for_http_status(status)
    return code


def is_failure(code: int) -> bool:
    return code in FAILURE_CODES


def name(code: int) -> str:
    """The code's name (`UNAVAILABLE`), for metrics labels and logs; unknown numbers are
    folded into UNKNOWN, so a label's values stay a fixed set."""
    try:
        return StatusCode(code).name
    except ValueError:
        return StatusCode.UNKNOWN.name
