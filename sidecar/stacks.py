"""The one visible place where each direction's layer stack is composed.

    outbound: Rescue -> AccessLog -> ForwardedHeaders -> [tracing: TraceOutbound]
                 -> [proxy port: Route]
                 -> per service (sidecar/upstream_stack.py): Deadline -> [FaultInjection]
                    -> [Retry] -> HealthyBalance -> Bulkhead -> [tracing: TraceAttempt] -> Connect
    inbound:  Rescue -> AccessLog -> ForwardedHeaders -> [tracing: TraceServer]
                 -> [mTLS: Authorize -> ClientCertHeader]
                 -> Deadline -> [FaultInjection] -> Bulkhead -> Balance -> Connect(app)
    gateway:  Rescue -> DropClientTraceContext -> AccessLog -> ForwardedHeaders -> GatewayRoute
                 -> per route:
                 [JWT | API key] -> [RateLimit] -> [Compress] -> [Cache] -> [PrefixRewrite]
                 -> [Deadline] -> the service's upstream stack

The inbound side does not retry: its one endpoint is the local app, and the caller's
sidecar retries what is worth retrying, with its budget.

Stacks are built once per listener and once per upstream service when config or discovery
brings it, never per request.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mesh.balance import make_balancer
from mesh.cluster import Cluster
from mesh.identity.authorize import Authorizer
from mesh.layers.access_log import AccessLog
from mesh.layers.authorize import Authorize
from mesh.layers.balance import Balance
from mesh.layers.bulkhead import Bulkhead
from mesh.layers.client_cert import ClientCertHeader
from mesh.layers.connect import Connect
from mesh.layers.deadline import Deadline
from mesh.layers.fault import FaultInjection
from mesh.layers.forwarding import ForwardedHeaders
from mesh.layers.noop import Noop
from mesh.layers.rescue import Rescue
from mesh.stack import Handler, LayerFactory, compose
from sidecar import tracing_wiring
from sidecar.config import SidecarConfig
from sidecar.policies import PolicyBook
from sidecar.upstream_stack import UpstreamStack


def _noop_layers() -> list[LayerFactory]:
    """MESH_BENCH_NOOP_LAYERS=N inserts N do-nothing layers (the benchmark's cost probe)."""
    count = int(os.environ.get("MESH_BENCH_NOOP_LAYERS", "0") or 0)
    return [Noop] * count


def edge_layers(config: SidecarConfig, direction: str) -> Sequence[LayerFactory]:
    """Layers every request of a listener passes, outermost first."""
    layers: list[LayerFactory] = [Rescue]
    if config.access_log:
        fields = tracing_wiring.log_fields(config)
        layers.append(lambda inner: AccessLog(inner, direction, fields=fields))
    layers.append(ForwardedHeaders)
    layers.extend(tracing_wiring.edge_layers(config, direction))
    layers.extend(_noop_layers())
    return layers


def upstream_stack(config: SidecarConfig, cluster: Cluster, book: PolicyBook) -> UpstreamStack:
    """Per-upstream part: deadline, retries, endpoint choice with breakers, bulkhead, connect."""
    attempt = tracing_wiring.attempt_layers(config)  # a CLIENT span per attempt, when tracing
    return UpstreamStack(
        cluster, book, make_balancer(config.balance), lambda: compose(Connect(), attempt)
    )


@dataclass
class InboundProtection:
    """The inbound side's own resilience layers, for /clusters."""

    bulkhead: Bulkhead
    fault: FaultInjection | None

    def statistics(self) -> dict[str, Any]:
        return {
            "bulkhead": self.bulkhead.statistics(),
            "fault": None if self.fault is None else self.fault.statistics(),
        }


@dataclass
class InboundStack:
    handler: Handler
    protection: InboundProtection


def inbound_stack(
    config: SidecarConfig,
    app: Cluster,
    identity: str | None = None,
    authorizer: Authorizer | None = None,
) -> InboundStack:
    """`identity`: this sidecar's SPIFFE ID when the listener speaks mTLS; `authorizer`:
    the policy when not the config's static lists (Consul intentions)."""
    layers = list(edge_layers(config, "inbound"))
    if identity is not None:
        if authorizer is None:
            authorizer = config.authorization.authorizer()
        layers += [
            lambda inner: Authorize(inner, authorizer, identity),
            lambda inner: ClientCertHeader(inner, identity),
        ]
    policies = config.inbound
    bulkhead = Bulkhead(
        Balance(Connect(), app, make_balancer(config.balance)), policies.bulkhead, label="inbound"
    )
    below: Handler = bulkhead
    fault = None
    if policies.fault.active:
        fault = FaultInjection(bulkhead, policies.fault)
        below = fault
    handler = compose(Deadline(below, config.inbound_timeouts.request), layers)
    return InboundStack(handler, InboundProtection(bulkhead, fault))


def outbound_stack(config: SidecarConfig, route: Handler) -> Handler:
    return compose(route, edge_layers(config, "outbound"))


def gateway_stack(config: SidecarConfig, routes: Handler) -> Handler:
    """The ingress gateway's listeners: the edge (outside clients' trace context dropped
    first: the gateway's span is the root), then its route table (whose routes end in
    the services' upstream stacks, see `sidecar.gateway.Gateway.route_stack`)."""
    from mesh.gateway.edge import DropClientTraceContext

    layers = list(edge_layers(config, "inbound"))
    layers.insert(1, DropClientTraceContext)  # right inside Rescue
    return compose(routes, layers)
