"""Policies: plain, frozen, comparable data. Each layer receives only its own policy.

Defaults follow the anchors (Envoy, Linkerd, Consul) unless a comment says why not.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one downstream HTTP/1 connection may cost."""

    #: Total size of the request line plus headers (Envoy: 60 KiB).
    max_header_bytes: int = 60 * 1024
    #: Number of request headers (Envoy: 100).
    max_headers: int = 100
    #: From the first byte of a request head to its end (HAProxy `timeout http-request`).
    header_timeout: float = 10.0
    #: A keep-alive connection with no request in progress is closed after this long.
    idle_timeout: float = 60.0
    #: A request body that makes no progress for this long ends the exchange (408).
    body_timeout: float = 30.0
    #: A response the client does not read for this long is aborted.
    write_timeout: float = 30.0
    #: Open connections per listener; more are closed at once (Envoy edge: 10k-100k).
    max_connections: int = 10_000
    #: Request body bytes buffered per connection before reading from the client pauses
    #: (flow control; Envoy's `per_connection_buffer_limit_bytes` is 1 MiB, edge 32 KiB).
    body_buffer_bytes: int = 256 * 1024
    #: Requests parsed ahead of the one in progress before reading pauses.
    max_pipelined: int = 16
    #: Accept HTTP/1.0 requests (answered without keep-alive unless asked).
    allow_http10: bool = True


@dataclass(frozen=True, slots=True)
class TimeoutPolicy:
    #: TCP (and later TLS) connect to one endpoint (Linkerd outbound: 1 s).
    connect: float = 1.0
    #: The whole exchange, retries included, until the response head (Envoy route: 15 s).
    request: float = 15.0


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    """Keep-alive connections to one endpoint."""

    max_idle: int = 256
    #: Idle pooled connections are closed after this long (below common app keep-alives).
    idle_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class BalancePolicy:
    #: "p2c" (power of two choices, least requests) or "round_robin".
    algorithm: str = "p2c"
