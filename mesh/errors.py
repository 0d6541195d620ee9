"""The error tree of the data path, and its one vocabulary of reasons.

Every failure the proxy itself detects is a `MeshError` subclass carrying an HTTP status and a
reason word. The reason travels to the client in the `x-mesh-error` header, to the access log
and to metrics, so a word means exactly one thing across the whole project:

    MeshError
    ├── BadRequest            400 bad-request           malformed or smuggling-shaped request
    ├── NotImplementedByProxy 501 not-implemented       valid HTTP the proxy does not carry
    ├── PassthroughDenied     403 passthrough-denied    proxy mode: a non-mesh host, passthrough off
    ├── Forbidden             403 forbidden
    ├── RequestTimeout        408 request-timeout       client too slow sending head or body
    ├── BodyTooLarge          413 body-too-large
    ├── HeadersTooLarge       431 headers-too-large
    ├── NoEndpoints           503 no-endpoints          discovery has no usable endpoint
    ├── UpstreamConnectFailed 503 upstream-connect-failed   refused/unreachable; nothing sent
    ├── UpstreamReset         502 upstream-reset        connection lost before a full response head
    ├── UpstreamProtocolError 502 upstream-protocol-error    upstream spoke broken HTTP
    ├── UpstreamTimeout       504 upstream-timeout
    ├── LoopDetected          508 loop-detected         an endpoint resolves to this proxy
    └── Draining              503 draining              shutting down, not taking new work

Later layers add their own words (circuit-open, retry-budget-exhausted, bulkhead-full, ...)
as subclasses here, never by reusing one of these.
"""

from __future__ import annotations


class MeshError(Exception):
    """A failure the proxy answers for itself."""

    status: int = 502
    reason: str = "proxy-error"
    #: Whether the request certainly never reached the application (safe to retry anywhere).
    never_sent: bool = False
    #: Seconds for a `Retry-After` header, when the condition is expected to clear.
    retry_after: int | None = None

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.reason)
        self.detail = detail or self.reason


class BadRequest(MeshError):
    status, reason = 400, "bad-request"


class NotImplementedByProxy(MeshError):
    status, reason = 501, "not-implemented"


class PassthroughDenied(MeshError):
    status, reason = 403, "passthrough-denied"


class Forbidden(MeshError):
    status, reason = 403, "forbidden"


class RequestTimeout(MeshError):
    status, reason = 408, "request-timeout"


class BodyTooLarge(MeshError):
    status, reason = 413, "body-too-large"


class HeadersTooLarge(MeshError):
    status, reason = 431, "headers-too-large"


class NoEndpoints(MeshError):
    status, reason = 503, "no-endpoints"
    never_sent = True
    retry_after = 1


class UpstreamConnectFailed(MeshError):
    status, reason = 503, "upstream-connect-failed"
    never_sent = True


class UpstreamReset(MeshError):
    status, reason = 502, "upstream-reset"


class UpstreamProtocolError(MeshError):
    status, reason = 502, "upstream-protocol-error"


class UpstreamTimeout(MeshError):
    status, reason = 504, "upstream-timeout"


class LoopDetected(MeshError):
    status, reason = 508, "loop-detected"
    never_sent = True


class Draining(MeshError):
    status, reason = 503, "draining"
    never_sent = True
    retry_after = 1
