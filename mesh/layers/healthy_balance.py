"""Chooses an endpoint among those the breakers allow, and reports how each attempt went.

A drop-in for `Balance` on clusters with outlier ejection: the balancer picks from
`OutlierDetector.candidates()` (the cluster's own tuple while nothing is ejected), a
half-open endpoint gets exactly one probe, and a retry (which leaves `request.endpoint` at
the endpoint it just tried) goes elsewhere when there is anywhere else to go. When no
endpoint is usable the answer is a fast 503: `circuit-open` for a single-endpoint service,
`all-endpoints-ejected` otherwise, with `Retry-After` until the next probe.

An endpoint failed when the attempt ended in a connect failure (refused, TLS, wrong peer
identity), a reset, a timeout or a protocol error, or its response was a 5xx; other errors
(the client's body broke, this proxy's own limits) say nothing about the endpoint and leave
its breaker as it was. A gRPC call is judged by its `grpc-status` (`mesh.grpc.outcome`),
from the head, or from the trailers when the body ends.
"""

from __future__ import annotations

import math
from typing import Any, Final

from mesh.balance import Balancer
from mesh.cluster import Cluster, EndpointState
from mesh.errors import (
    AllEndpointsEjected,
    CircuitOpen,
    MeshError,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from mesh.grpc.outcome import record_endpoint_outcome
from mesh.http1.message import Request, Response
from mesh.layers.balance import first_endpoints, pick_another
from mesh.resilience.breaker import REFUSED
from mesh.resilience.outlier import OutlierDetector
from mesh.resilience.retry import CONNECT_FAILURES
from mesh.stack import Handler

#: Errors that count against the endpoint they happened with.
ENDPOINT_FAILURES: Final[tuple[type[MeshError], ...]] = (
    *CONNECT_FAILURES,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamProtocolError,
)


class HealthyBalance(Handler):
    def __init__(
        self,
        inner: Handler,
        cluster: Cluster,
        balancer: Balancer,
        detector: OutlierDetector[EndpointState],
    ) -> None:
        self.inner = inner
        self.cluster = cluster
        self.balancer = balancer
        self.detector = detector

    async def handle(self, request: Request) -> Response:
        cluster = self.cluster
        request.service = cluster.name
        states = cluster.states
        if not states:
            states = await first_endpoints(cluster)
        detector = self.detector
        candidates = detector.candidates(states)
        if not candidates:
            raise self._refusal(states)
        state = pick_another(self.balancer, candidates, request.endpoint)
        ticket = detector.admit(state)
        if ticket == REFUSED:  # candidates are admissible; kept as a guard, not a path
            raise self._refusal(states)
        request.endpoint = state
        state.in_flight += 1
        state.requests += 1
        try:
            response = await self.inner.handle(request)
        except MeshError as exc:
            if isinstance(exc, ENDPOINT_FAILURES):
                detector.record(state, ticket, True)
            else:
                detector.release(state, ticket)
            raise
        except BaseException:
            detector.release(state, ticket)
            raise
        finally:
            state.in_flight -= 1
        if request.version == b"2":
            record_endpoint_outcome(detector, state, ticket, request, response)
        else:
            detector.record(state, ticket, response.status >= 500)
        return response

    def _refusal(self, states: tuple[EndpointState, ...]) -> MeshError:
        detector = self.detector
        detector.note_refusal()
        wait = detector.next_probe_in()
        retry_after = max(1, math.ceil(wait))
        if len(states) == 1:
            only = states[0]
            breaker = detector.breaker(only)
            why = breaker.reason if breaker is not None else "open"
            return CircuitOpen(
                f"{self.cluster.name} endpoint {only.address}: {why}; next probe in {wait:.1f}s",
                retry_after,
            )
        return AllEndpointsEjected(
            f"all {len(states)} endpoints of {self.cluster.name} are ejected; "
            f"next probe in {wait:.1f}s",
            retry_after,
        )

    def statistics(self) -> dict[str, Any]:
        return self.detector.statistics()

    def __repr__(self) -> str:
        return f"<HealthyBalance {self.cluster.name} {self.detector!r}>"
