"""A cluster: one upstream service's endpoints as the data path sees them.

Discovery answers replace the endpoint list (a new tuple, never edited in place); the state
of endpoints that stay (pools, counters) carries over, and pools of removed endpoints close
once their in-flight exchanges end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from discovery.endpoint import Endpoint, EndpointSet
from mesh.http1.pool import EndpointPool
from mesh.inline import Waiter

PoolFactory = Callable[[Endpoint], EndpointPool]


class EndpointState:
    __slots__ = ("endpoint", "in_flight", "pool", "requests")

    def __init__(self, endpoint: Endpoint, pool: EndpointPool) -> None:
        self.endpoint = endpoint
        self.pool = pool
        self.in_flight = 0
        self.requests = 0

    @property
    def address(self) -> str:
        return self.endpoint.address

    def statistics(self) -> dict[str, Any]:
        return {
            "address": self.endpoint.address,
            "identity": self.endpoint.identity,
            "weight": self.endpoint.weight,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "pool": self.pool.statistics(),
        }


class Cluster:
    def __init__(self, name: str, pool_factory: PoolFactory, is_self: Callable[[Endpoint], bool]):
        self.name = name
        self._pool_factory = pool_factory
        self._is_self = is_self
        #: Usable endpoints; replaced wholesale on every update.
        self.states: tuple[EndpointState, ...] = ()
        self.answered = False
        self.version = ""
        self.updated_at: float | None = None
        self.rejected: tuple[tuple[str, str], ...] = ()
        self.loops = 0
        self.stale_since: float | None = None
        self.last_error = ""
        self._first_answer: list[Waiter[None]] = []
        self._last: EndpointSet | None = None

    async def wait_answered(self, max_wait: float) -> None:
        """Wait (bounded) for discovery's first answer; a cluster made on demand has none."""
        if self.answered:
            return
        waiter: Waiter[None] = Waiter()
        self._first_answer.append(waiter)
        timer = asyncio.get_running_loop().call_later(max_wait, waiter.set_result, None)
        try:
            await waiter
        finally:
            timer.cancel()

    def recheck(self) -> None:
        """Apply the last answer again (a listener bound since: its port is now "self")."""
        if self._last is not None:
            self.update(self._last)

    def update(self, endpoint_set: EndpointSet) -> None:
        self._last = endpoint_set
        old = {s.endpoint: s for s in self.states}
        states: list[EndpointState] = []
        rejected = list(endpoint_set.rejected)
        loops = 0
        for endpoint in endpoint_set.endpoints:
            if self._is_self(endpoint):
                loops += 1
                rejected.append((endpoint.address, "resolves to this sidecar (loop)"))
                continue
            state = old.pop(endpoint, None)
            states.append(state or EndpointState(endpoint, self._pool_factory(endpoint)))
        for gone in old.values():
            gone.pool.close()
        self.states = tuple(states)
        self.rejected = tuple(rejected)
        self.loops = loops
        self.answered = True
        self.version = endpoint_set.version
        self.updated_at = time.time()
        self.stale_since = endpoint_set.stale_since
        self.last_error = endpoint_set.last_error
        waiting, self._first_answer = self._first_answer, []
        for waiter in waiting:
            waiter.set_result(None)

    def close(self) -> None:
        for state in self.states:
            state.pool.close()
        self.states = ()

    def statistics(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "discovery_answered": self.answered,
            "version": self.version,
            "updated_at": self.updated_at,
            "stale_since": self.stale_since,
            "last_error": self.last_error,
            "endpoints": [s.statistics() for s in self.states],
            "rejected": [{"address": a, "reason": r} for a, r in self.rejected],
        }
