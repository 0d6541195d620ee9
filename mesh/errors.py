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
    ├── UpstreamTlsFailed     502 upstream-tls-failed   TLS handshake with the peer failed
    │                                                   (plaintext peer, untrusted chain)
    ├── PeerIdentityMismatch  502 peer-identity-mismatch  the peer proved another identity
    │                                                   than discovery said; nothing sent
    ├── LoopDetected          508 loop-detected         an endpoint resolves to this proxy
    ├── Draining              503 draining              shutting down, not taking new work
    ├── CircuitOpen           503 circuit-open          the service's only endpoint has its
    │                                                   breaker open (or its one probe out)
    ├── AllEndpointsEjected   503 all-endpoints-ejected every endpoint of a multi-endpoint
    │                                                   service is ejected; fails fast
    ├── RetryBudgetExhausted  503 retry-budget-exhausted  reserved: see the class
    ├── BulkheadFull          503 bulkhead-full         concurrency limit reached and no room
    │                                                   (or no time) to wait for a slot
    ├── ConnectionLimit       503 connection-limit      the upstream's max_connections are open
    ├── FaultInjected         4xx/5xx fault-injected    an abort made on purpose (fault policy)
    ├── Unauthenticated       401 unauthenticated       gateway: no valid credential for the route
    ├── RateLimited           429 rate-limited          gateway: the route's limit for this key
    └── RouteNotFound         404 route-not-found       gateway: no route for this host and path

`never_sent` marks the errors raised before any byte of the request left this proxy: a retry
of those is safe for any method. Later layers add their own words as subclasses here, never by
reusing one of these.
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
    #: Further headers of the response made for this error (a challenge, limit state).
    headers: tuple[tuple[bytes, bytes], ...] = ()

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

    def __init__(self, detail: str = "", timed_out: bool = False) -> None:
        super().__init__(detail)
        #: No answer within the connect timeout (a blackhole), rather than a refusal.
        self.timed_out = timed_out


class UpstreamReset(MeshError):
    status, reason = 502, "upstream-reset"


class UpstreamProtocolError(MeshError):
    status, reason = 502, "upstream-protocol-error"


class UpstreamTimeout(MeshError):
    status, reason = 504, "upstream-timeout"


class UpstreamTlsFailed(MeshError):
    status, reason = 502, "upstream-tls-failed"
    never_sent = True


class PeerIdentityMismatch(MeshError):
    status, reason = 502, "peer-identity-mismatch"
    never_sent = True


class LoopDetected(MeshError):
    status, reason = 508, "loop-detected"
    never_sent = True


class Draining(MeshError):
    status, reason = 503, "draining"
    never_sent = True
    retry_after = 1


class CircuitOpen(MeshError):
    """The only endpoint a request could use has its breaker open, or its probe in flight.

    Services with several endpoints answer `AllEndpointsEjected` instead: the word tells an
    operator whether one endpoint or a whole set is out.
    """

    status, reason = 503, "circuit-open"
    never_sent = True

    def __init__(self, detail: str = "", retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class AllEndpointsEjected(MeshError):
    """Every endpoint of the service is ejected: a fast 503, never routing into them."""

    status, reason = 503, "all-endpoints-ejected"
    never_sent = True

    def __init__(self, detail: str = "", retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class RetryBudgetExhausted(MeshError):
    """Reserved for a response made *because* the retry budget refused.

    The Retry layer makes none: when the budget refuses a retry, the client gets the last
    attempt's own answer (the upstream's response, or that attempt's error), since that is
    what failed. The refusal is counted, and a proxy-made error says "not retried:
    retry-budget-exhausted" in its detail; this word is never the `x-mesh-error` of a
    response that some other failure caused.
    """

    status, reason = 503, "retry-budget-exhausted"
    never_sent = True


class BulkheadFull(MeshError):
    """No free slot under the concurrency limit, and the wait queue was full or too slow."""

    status, reason = 503, "bulkhead-full"
    never_sent = True
    retry_after = 1

    def __init__(self, detail: str = "", retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class ConnectionLimit(MeshError):
    """Opening one more connection would pass the upstream's `max_connections`."""

    status, reason = 503, "connection-limit"
    never_sent = True
    retry_after = 1


class FaultInjected(MeshError):
    """An abort injected on purpose (fault policy or a trusted fault header)."""

    status, reason = 503, "fault-injected"
    never_sent = True

    def __init__(self, detail: str = "", status: int = 503) -> None:
        super().__init__(detail)
        self.status = status


class Unauthenticated(MeshError):
    """The route needs a credential (JWT, API key) and the request has no valid one.

    `challenge` is the `WWW-Authenticate` value (RFC 9110 §11.6.1, RFC 6750 §3)."""

    status, reason = 401, "unauthenticated"
    never_sent = True

    def __init__(self, detail: str, challenge: bytes) -> None:
        super().__init__(detail)
        self.headers = ((b"www-authenticate", challenge),)


class RateLimited(MeshError):
    """The route's rate limit for this key (client, subject or API key) is used up."""

    status, reason = 429, "rate-limited"
    never_sent = True

    def __init__(
        self, detail: str, retry_after: int, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.headers = headers


class RouteNotFound(MeshError):
    """No gateway route matches the request's host and (normalised) path."""

    status, reason = 404, "route-not-found"
    never_sent = True
