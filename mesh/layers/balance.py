"""Chooses the endpoint for an attempt from the cluster's current endpoints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from mesh.balance import Balancer
from mesh.cluster import Cluster, EndpointState
from mesh.errors import LoopDetected, NoEndpoints
from mesh.http1.message import Request, Response
from mesh.stack import Handler

#: How long a request waits for the first discovery answer of a service seen for the first
#: time; after that, no answer means a fast 503 rather than a hang.
FIRST_ANSWER_WAIT: Final = 2.0


async def first_endpoints(cluster: Cluster) -> tuple[EndpointState, ...]:
    """A cluster with no endpoint yet: wait (bounded) for discovery's first answer, then
    its endpoints, or the reason there are none."""
    if not cluster.answered:
        await cluster.wait_answered(FIRST_ANSWER_WAIT)
    states = cluster.states
    if not states:
        if cluster.loops:
            raise LoopDetected(f"every endpoint of {cluster.name} is this sidecar")
        if not cluster.answered:
            raise NoEndpoints(f"discovery has not answered yet for {cluster.name}")
        raise NoEndpoints(f"no endpoints for {cluster.name}")
    return states


def pick_another(
    balancer: Balancer, states: Sequence[EndpointState], previous: EndpointState | None
) -> EndpointState:
    """The balancer's pick; a retry (`previous`: the endpoint just tried) goes elsewhere
    when there is anywhere else to go."""
    state = balancer.pick(states)
    if state is previous and len(states) > 1:
        state = balancer.pick([s for s in states if s is not previous])
    return state


class Balance(Handler):
    def __init__(self, inner: Handler, cluster: Cluster, balancer: Balancer) -> None:
        self.inner = inner
        self.cluster = cluster
        self.balancer = balancer

    async def handle(self, request: Request) -> Response:
        cluster = self.cluster
        request.service = cluster.name
        states = cluster.states
        if not states:
            states = await first_endpoints(cluster)
        state = pick_another(self.balancer, states, request.endpoint)
        request.endpoint = state
        state.in_flight += 1
        state.requests += 1
        try:
            return await self.inner.handle(request)
        finally:
            state.in_flight -= 1
