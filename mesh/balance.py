"""Load balancers: pick one endpoint for one attempt.

P2C least-request (the default, as in Linkerd and Envoy's LEAST_REQUEST) samples two
endpoints and keeps the one with fewer requests in flight relative to its weight; it avoids
the herding of pure least-request and adapts to slow endpoints at O(1) cost.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from mypy_extensions import mypyc_attr

from mesh.cluster import EndpointState


@mypyc_attr(allow_interpreted_subclasses=True)
class Balancer:
    """A base class rather than a Protocol: compiled callers pick through a vtable slot."""

    def pick(self, states: Sequence[EndpointState]) -> EndpointState:
        raise NotImplementedError


class PowerOfTwoChoices(Balancer):
    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = (rng or random.Random()).random

    def pick(self, states: Sequence[EndpointState]) -> EndpointState:
        n = len(states)
        if n == 1:
            return states[0]
        rand = self._random
        a = states[int(rand() * n)]
        b = states[int(rand() * (n - 1))]
        if b is a:
            b = states[n - 1]
        # Compare load per unit of weight without division: a.in_flight/a.w vs b.in_flight/b.w.
        if (a.in_flight + 1) * b.endpoint.weight <= (b.in_flight + 1) * a.endpoint.weight:
            return a
        return b


class RoundRobin(Balancer):
    """Weighted round robin (each endpoint appears `weight` times in the cycle)."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, states: Sequence[EndpointState]) -> EndpointState:
        total = sum(s.endpoint.weight for s in states)
        slot = self._next % total
        self._next = slot + 1
        for state in states:
            slot -= state.endpoint.weight
            if slot < 0:
                return state
        return states[-1]


def make_balancer(algorithm: str) -> Balancer:
    if algorithm == "p2c":
        return PowerOfTwoChoices()
    if algorithm == "round_robin":
        return RoundRobin()
    raise ValueError(f"unknown balancing algorithm {algorithm!r}")
