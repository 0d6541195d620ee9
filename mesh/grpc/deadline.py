"""A `grpc-timeout` bounds the hop: the request's deadline becomes the earlier of the mesh's
own and the caller's, and the header forwarded says the time left, so each hop downstream
sees less (grpc/doc/PROTOCOL-HTTP2.md: a proxy should decrement it)."""

from __future__ import annotations

from mesh.grpc import timeout
from mesh.http1.message import Request


def bound_by_grpc_timeout(request: Request, now: float) -> None:
    """Apply the request's `grpc-timeout`, if it has one (a malformed one: `BadRequest`)."""
    value = timeout.find(request.headers)
    if value is None:
        return
    deadline = now + timeout.parse(value)
    if request.deadline is None or deadline < request.deadline:
        request.deadline = deadline
    timeout.replace(request.headers, timeout.format_seconds(request.deadline - now))


def restamp(request: Request, seconds_left: float) -> None:
    """A retry's attempt: its `grpc-timeout`, when the call has one, says what is left of the
    attempt's own deadline (per-try timeouts included), not what the first attempt had."""
    if timeout.find(request.headers) is not None:
        timeout.replace(request.headers, timeout.format_seconds(seconds_left))
