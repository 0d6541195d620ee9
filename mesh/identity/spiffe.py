"""SPIFFE IDs in Consul's layout: spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any

_ID = re.compile(
    r"spiffe://(?P<td>[a-z0-9.\-]+)/ns/(?P<ns>[A-Za-z0-9_.\-]+)"
    r"/dc/(?P<dc>[A-Za-z0-9_.\-]+)/svc/(?P<svc>[A-Za-z0-9_.\-]+)"
)


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    datacenter: str
    service: str

    @property
    def uri(self) -> str:
        return (
            f"spiffe://{self.trust_domain}/ns/{self.namespace}"
            f"/dc/{self.datacenter}/svc/{self.service}"
        )

    def __str__(self) -> str:
        return self.uri


def parse(uri: str) -> SpiffeId | None:
    """The ID in a URI SAN, or None when it is not a service identity of this layout."""
    match = _ID.fullmatch(uri)
    if match is None:
        return None
    return SpiffeId(match["td"], match["ns"], match["dc"], match["svc"])


def service_id(service: str, trust_domain: str, datacenter: str = "dc1") -> SpiffeId:
    return SpiffeId(trust_domain.lower(), "default", datacenter, service)


def uri_sans(peercert: dict[str, Any] | None) -> list[str]:
    if not peercert:
        return []
    return [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """The peer's SPIFFE ID, or "" when it presented none (verification already passed)."""
    if ssl_object is None:
        return ""
    for uri in uri_sans(ssl_object.getpeercert()):
        if parse(uri) is not None:
            return uri
    return ""
