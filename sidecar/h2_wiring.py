"""Which endpoints are spoken to over HTTP/2, and how (mesh/http2/pool.py).

HTTP/2 is used when the service says so: the upstream's `protocol` (config) or its Consul
Meta `protocol` is `http2` or `grpc`; for the local app, `app_protocol`. Between sidecars
it runs over mTLS with ALPN h2 (h2c when the mesh has no TLS); to the app, h2c. Everything
else stays HTTP/1.1.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from discovery.endpoint import Endpoint
from mesh.http1.pool import EndpointPool

HTTP2_PROTOCOLS = frozenset({"http2", "grpc"})
PROTOCOL_META = "protocol"

PoolFactory = Callable[[Endpoint], EndpointPool]
ContextSource = Callable[[], ssl.SSLContext]


def speak_h2(pool: EndpointPool, h2_tls: ContextSource | None) -> EndpointPool:
    """Send this endpoint's requests over HTTP/2 (TLS pools offer ALPN h2)."""
    if pool.h2 is None:
        from mesh.http2.pool import H2Pool  # h2 loads only where HTTP/2 is spoken

        if pool.tls is not None and h2_tls is not None:
            pool.tls = h2_tls
        pool.h2 = H2Pool(pool)
    return pool


def declared_h2(endpoint: Endpoint) -> bool:
    return any(k == PROTOCOL_META and v in HTTP2_PROTOCOLS for k, v in endpoint.meta)


def by_meta(make: PoolFactory, h2_tls: ContextSource | None) -> PoolFactory:
    """Pools for mesh endpoints: HTTP/2 where the endpoint's Meta declares it."""

    def pools(endpoint: Endpoint) -> EndpointPool:
        pool = make(endpoint)
        return speak_h2(pool, h2_tls) if declared_h2(endpoint) else pool

    return pools


def always(make: PoolFactory) -> PoolFactory:
    """Pools that always speak HTTP/2 (the local app with `app_protocol: http2|grpc`)."""
    return lambda endpoint: speak_h2(make(endpoint), None)
