"""One upstream service's layer chain, and the resilience state behind it.

    Deadline -> [FaultInjection] -> [Retry] -> HealthyBalance -> Bulkhead -> Connect

(`mesh.resilience` explains the order). The chain is built from the upstream's effective
policies (`sidecar.policies`); when those change (the upstream's Consul Meta changed), the
chain is rebuilt behind the same head, so listeners holding the head keep it, in-flight
requests finish on the chain they started on, and state whose policy did not change
(breakers, budget, bulkhead counts) carries over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mesh.balance import Balancer
from mesh.cluster import Cluster, EndpointState
from mesh.http1.pool import EndpointPool
from mesh.layers.balance import Balance
from mesh.layers.bulkhead import Bulkhead
from mesh.layers.connect import Connect
from mesh.layers.deadline import Deadline
from mesh.layers.fault import FaultInjection
from mesh.layers.healthy_balance import HealthyBalance
from mesh.layers.retry import Retry
from mesh.resilience.budget import RetryBudget
from mesh.resilience.latency import AttemptLatency
from mesh.resilience.limits import ResourceGauge
from mesh.resilience.outlier import OutlierDetector
from mesh.stack import Handler
from sidecar.policies import META_KEY, PolicyBook, UpstreamPolicies

log = logging.getLogger("sidecar.upstream")


def _address(state: EndpointState) -> str:
    return state.address


class UpstreamStack:
    def __init__(
        self,
        cluster: Cluster,
        book: PolicyBook,
        balancer: Balancer,
        connect: Callable[[], Handler] = Connect,
    ) -> None:
        self.cluster = cluster
        #: Makes the innermost handler of an attempt (Connect, with tracing above it).
        self._connect = connect
        self.book = book
        self.balancer = balancer
        self._clock = asyncio.get_event_loop().time
        self.policies = book.local(cluster.name)
        self.meta = ""
        self.meta_problem = ""
        self.meta_applied = False
        self.latency = AttemptLatency()
        self.budget = RetryBudget(self.policies.budget, self._clock)
        self.retries = ResourceGauge("retries", self.policies.limits.max_retries)
        self.connections = ResourceGauge("connections", self.policies.limits.max_connections)
        self.detector = self._detector(self.policies)
        self.bulkhead = Bulkhead(self._connect(), self.policies.bulkhead(), label=cluster.name)
        self.retry: Retry | None = None
        self.fault: FaultInjection | None = None
        #: What listeners and routes hold; only its `inner` and `timeout` ever change.
        self.handler = Deadline(Connect(), self.policies.timeouts.request)
        #: Applied to each new endpoint's pool (HTTP/2 for a service declared so).
        self.adapt_pool: Callable[[EndpointPool], EndpointPool] | None = None
        self._build(self.policies)

    def _detector(self, policies: UpstreamPolicies) -> OutlierDetector[EndpointState]:
        return OutlierDetector(policies.breaker, policies.outlier, self._clock, label=_address)

    def _build(self, policies: UpstreamPolicies) -> None:
        old = self.policies
        self.policies = policies
        if policies.budget != old.budget:
            self.budget = RetryBudget(policies.budget, self._clock)
        if policies.limits.max_retries != old.limits.max_retries:
            self.retries.limit = policies.limits.max_retries
        if policies.limits.max_connections != old.limits.max_connections:
            self.connections.limit = policies.limits.max_connections
        if policies.breaker != old.breaker or policies.outlier != old.outlier:
            self.detector = self._detector(policies)
        if policies.bulkhead() != self.bulkhead.policy:
            self.bulkhead = Bulkhead(self._connect(), policies.bulkhead(), label=self.cluster.name)
        for state in self.cluster.states:
            state.pool.connect_timeout = policies.timeouts.connect

        chain: Handler
        if policies.outlier.enabled:
            chain = HealthyBalance(self.bulkhead, self.cluster, self.balancer, self.detector)
        else:
            chain = Balance(self.bulkhead, self.cluster, self.balancer)
        previous, self.retry = self.retry, None
        if policies.retry.max_retries > 0:
            self.retry = Retry(
                chain,
                policies.retry,
                self.budget,
                latency=self.latency,
                retries_gauge=self.retries,
                clock=self._clock,
            )
            if previous is not None:  # counters are totals: they survive a rebuild
                self.retry.requests = previous.requests
                self.retry.retries = previous.retries
                self.retry.not_retried = previous.not_retried
            chain = self.retry
        self.fault = None
        if policies.fault.active:
            self.fault = FaultInjection(chain, policies.fault)
            chain = self.fault
        self.handler.inner = chain
        self.handler.timeout = policies.timeouts.request

    def adopt(self, pool: EndpointPool) -> EndpointPool:
        """A new endpoint's pool: it counts against this upstream's connection cap."""
        pool.connection_gauge = self.connections
        pool.connect_timeout = self.policies.timeouts.connect
        return pool if self.adapt_pool is None else self.adapt_pool(pool)

    def refresh(self) -> None:
        """After a discovery answer: apply the upstream's `mesh-policy` Meta if it changed."""
        values = sorted(
            {v for s in self.cluster.states for k, v in s.endpoint.meta if k == META_KEY}
        )
        meta = values[0] if values else ""
        if meta == self.meta:
            return
        self.meta = meta
        policies, problem = self.book.resolve(self.cluster.name, meta)
        self.meta_applied = bool(meta) and not problem
        if len(values) > 1:
            problem = f"instances disagree on Meta {META_KEY}; using the first in order"
        if problem and problem != self.meta_problem:
            log.warning("%s: %s", self.cluster.name, problem)
        self.meta_problem = problem
        if policies != self.policies:
            log.info("%s: calling policy changed by its Meta %s", self.cluster.name, META_KEY)
            self._build(policies)

    def rebook(self, book: PolicyBook) -> None:
        """A reloaded config: resolve the policies again; rebuild behind the head if changed."""
        self.book = book
        policies, _ = book.resolve(self.cluster.name, self.meta)
        if policies != self.policies:
            self._build(policies)

    def statistics(self) -> dict[str, Any]:
        return {
            "policy": {
                "source": "defaults+meta+local" if self.meta_applied else "defaults+local",
                "meta_problem": self.meta_problem or None,
                **self.policies.model_dump(mode="json"),
            },
            "retry": None if self.retry is None else self.retry.statistics(),
            "outlier": self.detector.statistics(),
            "bulkhead": self.bulkhead.statistics(),
            "connections": self.connections.statistics(),
            "fault": None if self.fault is None else self.fault.statistics(),
        }
