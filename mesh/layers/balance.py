"""Chooses the endpoint for an attempt from the cluster's current endpoints."""

from __future__ import annotations

from mesh.balance import Balancer
from mesh.cluster import Cluster
from mesh.errors import LoopDetected, NoEndpoints
from mesh.http1.message import Request, Response
from mesh.stack import Handler

#: How long a request waits for the first discovery answer of a service seen for the first
#: time; after that, no answer means a fast 503 rather than a hang.
FIRST_ANSWER_WAIT = 2.0


class Balance:
    def __init__(self, inner: Handler, cluster: Cluster, balancer: Balancer) -> None:
        self.inner = inner
        self.cluster = cluster
        self.balancer = balancer

    async def handle(self, request: Request) -> Response:
        cluster = self.cluster
        request.service = cluster.name
        states = cluster.states
        if not states and not cluster.answered:
            await cluster.wait_answered(FIRST_ANSWER_WAIT)
            states = cluster.states
        if not states:
            if cluster.loops:
                raise LoopDetected(f"every endpoint of {cluster.name} is this sidecar")
            if not cluster.answered:
                raise NoEndpoints(f"discovery has not answered yet for {cluster.name}")
            raise NoEndpoints(f"no endpoints for {cluster.name}")
        state = self.balancer.pick(states)
        previous = request.endpoint
        if state is previous and len(states) > 1:
            # A retry: the endpoint just tried is the one place it should not go.
            state = self.balancer.pick([s for s in states if s is not previous])
        request.endpoint = state
        state.in_flight += 1
        state.requests += 1
        try:
            return await self.inner.handle(request)
        finally:
            state.in_flight -= 1
