"""The one visible place where each direction's layer stack is composed.

    outbound: Rescue -> AccessLog -> ForwardedHeaders -> [tracing: TraceOutbound]
                 -> [proxy port: Route]
                 -> per service: Deadline -> Balance -> [tracing: TraceAttempt] -> Connect
    inbound:  Rescue -> AccessLog -> ForwardedHeaders -> [tracing: TraceServer]
                 -> [mTLS: Authorize -> ClientCertHeader] -> Deadline -> Balance -> Connect(app)

Stacks are built once per listener and once per upstream service when config or discovery
brings it, never per request.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from mesh.balance import make_balancer
from mesh.cluster import Cluster
from mesh.layers.access_log import AccessLog
from mesh.layers.authorize import Authorize
from mesh.layers.balance import Balance
from mesh.layers.client_cert import ClientCertHeader
from mesh.layers.connect import Connect
from mesh.layers.deadline import Deadline
from mesh.layers.forwarding import ForwardedHeaders
from mesh.layers.noop import Noop
from mesh.layers.rescue import Rescue
from mesh.stack import Handler, LayerFactory, compose
from sidecar import tracing_wiring
from sidecar.config import SidecarConfig


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


def cluster_stack(config: SidecarConfig, cluster: Cluster, timeout: float) -> Handler:
    """Per-upstream part: deadline, then endpoint choice, then the connection."""
    balancer = make_balancer(config.balance)
    return compose(
        Connect(),
        [
            lambda inner: Deadline(inner, timeout),
            lambda inner: Balance(inner, cluster, balancer),
            *tracing_wiring.attempt_layers(config),
        ],
    )


def inbound_stack(config: SidecarConfig, app: Cluster, identity: str | None = None) -> Handler:
    """`identity`: this sidecar's SPIFFE ID when the listener speaks mTLS."""
    layers = list(edge_layers(config, "inbound"))
    if identity is not None:
        authorizer = config.authorization.authorizer()
        layers += [
            lambda inner: Authorize(inner, authorizer, identity),
            lambda inner: ClientCertHeader(inner, identity),
        ]
    return compose(cluster_stack(config, app, config.inbound_timeouts.request), layers)


def outbound_stack(config: SidecarConfig, route: Handler) -> Handler:
    return compose(route, edge_layers(config, "outbound"))
