"""An endpoint is an address plus the identity the peer there must prove."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

DEFAULT_TRUST_DOMAIN = "mesh.local"


def service_identity(
    service: str, trust_domain: str = DEFAULT_TRUST_DOMAIN, dc: str = "dc1"
) -> str:
    """The SPIFFE ID of a service, in Consul's layout."""
    return f"spiffe://{trust_domain}/ns/default/dc/{dc}/svc/{service}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    #: SPIFFE URI the peer's certificate must carry (checked once mTLS is on).
    identity: str = ""
    weight: int = 1
    #: Free-form labels from the source (Consul node, tags), shown on /clusters.
    meta: tuple[tuple[str, str], ...] = ()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def problem(self) -> str | None:
        """Why this endpoint must not be used, or None when it is acceptable."""
        if not 0 < self.port < 65536:
            return f"port {self.port} out of range"
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return None if self.host else "empty host"
        if ip.is_unspecified:
            return f"unspecified address {self.host}"
        return None


@dataclass(frozen=True, slots=True)
class EndpointSet:
    """One answer from discovery for one service."""

    service: str
    endpoints: tuple[Endpoint, ...] = ()
    #: Version of the source's data (Consul index, file mtime) for staleness reports.
    version: str = ""
    #: Entries the source sent but the resolver refused, with the reason.
    rejected: tuple[tuple[str, str], ...] = field(default=())
    #: When the source stopped answering (Unix time); these are its last good endpoints.
    stale_since: float | None = None
    #: Why the source is not answering, while stale.
    last_error: str = ""
