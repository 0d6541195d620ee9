"""Consul's /v1/health/connect answer as an EndpointSet: shape, identity, weights, refusals.

An answer whose shape is wrong anywhere (not a list, an entry without a Service mapping, a
port that is not an integer...) is refused as a whole with ConsulBadResponse: a garbled answer
must not replace good endpoints. Entries that are well-formed but unusable (port 0, an
unspecified or malformed address, weight below 1, a duplicate) are refused one by one and
listed with the reason. At most `max_endpoints` are kept; the rest are counted, not parsed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from discovery.consul_client import ConsulBadResponse
from discovery.endpoint import Endpoint, EndpointSet, service_identity

#: Refusals listed one by one on /clusters; more are summed up in one line.
MAX_REJECTED_SHOWN = 20
MAX_WEIGHT = 65535
# A DNS name or an IP literal; anything else (spaces, control bytes) is not an address.
_HOST = re.compile(r"^[A-Za-z0-9:%._-]{1,253}$")


def _field(mapping: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = mapping.get(key)
    # bool is an int to Python, never to Consul.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        got = type(value).__name__
        raise ConsulBadResponse(f"{where}.{key}: expected {kind.__name__}, got {got}")
    return value


def _weight(service: Mapping[str, Any], where: str) -> int:
    weights = service.get("Weights")
    if weights is None:
        return 1
    if not isinstance(weights, Mapping):
        raise ConsulBadResponse(f"{where}.Weights: expected dict, got {type(weights).__name__}")
    if weights.get("Passing") is None:
        return 1
    weight: int = _field(weights, "Passing", int, f"{where}.Weights")
    return weight


def _address(service: Mapping[str, Any], node: Mapping[str, Any], where: str) -> str:
    address: str = _field(service, "Address", str, f"{where}.Service")
    # An instance registered without an address is reached at its node's address.
    if not address:
        address = _field(node, "Address", str, f"{where}.Node")
    return address


#: The service Meta key carrying its calling policy (sidecar/policies.py reads it).
POLICY_META = "mesh-policy"


def _policy_meta(svc: Mapping[str, Any]) -> str:
    meta = svc.get("Meta")
    if not isinstance(meta, Mapping):
        return ""
    value = meta.get(POLICY_META)
    return value if isinstance(value, str) else ""


def endpoint_set(
    service: str,
    entries: Any,
    *,
    trust_domain: str,
    datacenter: str,
    version: str = "",
    max_endpoints: int = 5000,
) -> EndpointSet:
    """The usable endpoints in a health/connect answer for `service`, or ConsulBadResponse."""
    if not isinstance(entries, list):
        raise ConsulBadResponse(f"health answer: expected list, got {type(entries).__name__}")
    identity = service_identity(service, trust_domain, datacenter)
    endpoints: list[Endpoint] = []
    rejected: list[tuple[str, str]] = []
    seen: set[tuple[str, int]] = set()
    for i, entry in enumerate(entries):
        if len(endpoints) >= max_endpoints:
            rejected.append(("...", f"{len(entries) - i} more over max_endpoints {max_endpoints}"))
            break
        where = f"entry {i}"
        if not isinstance(entry, Mapping):
            raise ConsulBadResponse(f"{where}: expected dict, got {type(entry).__name__}")
        svc = _field(entry, "Service", Mapping, where)
        node = _field(entry, "Node", Mapping, where)
        host = _address(svc, node, where)
        port: int = _field(svc, "Port", int, f"{where}.Service")
        weight = _weight(svc, where)
        meta: tuple[tuple[str, str], ...] = (
            ("node", str(node.get("Node", ""))),
            ("id", str(svc.get("ID", ""))),
        )
        policy = _policy_meta(svc)
        if policy:
            meta = (*meta, (POLICY_META, policy))
        endpoint = Endpoint(host, port, identity, min(max(weight, 1), MAX_WEIGHT), meta)
        problem = endpoint.problem()
        if problem is None and not _HOST.match(host):
            problem = "malformed address"
        if problem is None and weight < 1:
            problem = f"weight {weight}"
        if problem is None and (host, port) in seen:
            problem = "duplicate address"
        if problem is not None:
            rejected.append((f"{host[:64]}:{port}", problem))
            continue
        seen.add((host, port))
        endpoints.append(endpoint)
    if len(rejected) > MAX_REJECTED_SHOWN:
        more = len(rejected) - MAX_REJECTED_SHOWN
        rejected = [*rejected[:MAX_REJECTED_SHOWN], ("...", f"{more} more refused")]
    return EndpointSet(service, tuple(endpoints), version, tuple(rejected))
