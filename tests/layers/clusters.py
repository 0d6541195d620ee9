"""Clusters for layer tests: real `Cluster`s whose pools never connect."""

from __future__ import annotations

from collections.abc import Sequence

from discovery.endpoint import Endpoint, EndpointSet
from mesh.balance import Balancer
from mesh.cluster import Cluster, EndpointState
from mesh.http1.pool import EndpointPool
from mesh.policy import PoolPolicy


def _pool(endpoint: Endpoint) -> EndpointPool:
    return EndpointPool(endpoint.host, endpoint.port, PoolPolicy(), 1.0)


def cluster_of(n: int, name: str = "payments") -> Cluster:
    cluster = Cluster(name, _pool, lambda endpoint: False)
    endpoints = tuple(Endpoint("127.0.0.1", 21000 + i) for i in range(n))
    cluster.update(EndpointSet(name, endpoints, version="1"))
    return cluster


class FirstChoice(Balancer):
    """A balancer that always takes the first candidate, so tests know where requests go."""

    def pick(self, states: Sequence[EndpointState]) -> EndpointState:
        return states[0]
