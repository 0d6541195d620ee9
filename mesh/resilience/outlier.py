"""Outlier ejection: a cluster's endpoint breakers, seen and capped as one set.

An endpoint is *ejected* exactly when its breaker is not closed (open, or half-open with
its probe). There is one failure accounting per endpoint, the breaker's; this module adds
Envoy's cluster rules on top:

- at most `max(1, floor(max_ejection_share * endpoints))` are ejected at once; an endpoint
  that crosses its threshold beyond the cap stays in rotation, marked `deferred`, and is
  ejected on its next failure once there is room. When discovery shrinks the cluster below
  its ejected count, the longest-ejected endpoints are restored;
- an endpoint's ejection time grows with the times it was ejected without lasting recovery
  (the breaker's backoff).

When no endpoint is usable (all ejected, or the only one has its probe out), the caller
answers a fast 503 with a reason (`circuit-open` for a single-endpoint service,
`all-endpoints-ejected` otherwise) and a `Retry-After` until the next probe; it never
routes into an ejected endpoint ("panic routing"). Panic routing would send the bulk of the
traffic to endpoints known to fail, turning a clear, cheap answer into slow errors and
extra load on an endpoint trying to recover; the probes keep testing with real requests,
so the service comes back by itself. With the default 10 % cap this can only happen to
clusters of fewer than ten endpoints (the cap's "at least one").

`candidates()` is what the balancer picks from; while nothing is ejected it returns the
cluster's own tuple (no allocation, no clock read).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from mesh.resilience.breaker import ADMITTED, CLOSED, OPEN, PROBE, CircuitBreaker
from mesh.resilience.clock import Clock, Random
from mesh.resilience.policy import BreakerPolicy, OutlierPolicy

K = TypeVar("K", bound=Hashable)


class OutlierDetector(Generic[K]):
    def __init__(
        self,
        breaker_policy: BreakerPolicy,
        outlier_policy: OutlierPolicy,
        clock: Clock,
        rng: Random | None = None,
        label: Callable[[K], str] = str,
    ) -> None:
        self.breaker_policy = breaker_policy
        self.outlier_policy = outlier_policy
        self._clock = clock
        self._random = rng or random.random
        self._label = label
        self._breakers: dict[K, CircuitBreaker] = {}
        #: The endpoint tuple last seen (compared by identity: discovery replaces it).
        self._seen: tuple[K, ...] | None = None
        self._usable: tuple[K, ...] = ()
        #: The usable tuple must be rebuilt (a breaker changed) or becomes stale at this time.
        self._dirty = True
        self._next_change = math.inf
        #: Endpoints whose breaker is not closed.
        self.ejected = 0
        self.deferrals = 0
        self.restorations = 0
        self.refusals = 0

    # -- the balancer's view -------------------------------------------------------------------
    def candidates(self, states: tuple[K, ...]) -> tuple[K, ...]:
        """The endpoints a request may go to now (empty: answer with `refusal_reason`)."""
        if states is not self._seen:
            self._sync(states)
        if self.ejected == 0:
            return states
        now = self._clock()
        if self._dirty or now >= self._next_change:
            self._rebuild(now)
        return self._usable

    def admit(self, key: K) -> int:
        """Ticket for a request to `key` (PROBE claims a half-open endpoint's one probe)."""
        breaker = self._breakers.get(key)
        if breaker is None or breaker.state == CLOSED:
            return ADMITTED
        ticket = breaker.admit()
        self._dirty = True
        return ticket

    def record(self, key: K, ticket: int, failed: bool) -> None:
        """The outcome of a request admitted with `ticket`."""
        breaker = self._breakers.get(key)
        if breaker is None:
            return  # the endpoint left the cluster meanwhile
        if not failed:
            was_closed = breaker.state == CLOSED
            breaker.record_success(ticket)
            if not was_closed and breaker.state == CLOSED:
                self.ejected -= 1
                self._dirty = True
            return
        reason = breaker.record_failure(ticket)
        if ticket == PROBE:
            self._dirty = True  # re-opened, with a new probe time
        elif reason:
            if self.ejected < self.max_ejected():
                breaker.trip(reason)
                self.ejected += 1
                self._dirty = True
            else:
                breaker.defer(reason)
                self.deferrals += 1

    def release(self, key: K, ticket: int) -> None:
        """The request ended with no verdict on the endpoint (its probe is free again)."""
        if ticket == PROBE:
            breaker = self._breakers.get(key)
            if breaker is not None:
                breaker.release(ticket)
                self._dirty = True

    def max_ejected(self) -> int:
        n = len(self._breakers)
        if n == 0:
            return 0
        # The epsilon keeps 0.29 * 100 from flooring to 28.
        return max(1, int(self.outlier_policy.max_ejection_share * n + 1e-9))

    def next_probe_in(self) -> float:
        """Seconds until the earliest ejected endpoint may be probed (0: one may go now)."""
        now = self._clock()
        waits = [
            wait for b in self._breakers.values() if (wait := b.time_to_probe(now)) is not None
        ]
        return min(waits) if waits else 0.0

    def note_refusal(self) -> None:
        self.refusals += 1

    def breaker(self, key: K) -> CircuitBreaker | None:
        return self._breakers.get(key)

    # -- bookkeeping -------------------------------------------------------------------------
    def _sync(self, states: tuple[K, ...]) -> None:
        old = self._breakers
        breakers: dict[K, CircuitBreaker] = {}
        for key in states:
            breaker = old.get(key)
            if breaker is None:
                breaker = CircuitBreaker(
                    self.breaker_policy, self._clock, self._random, self._label(key)
                )
            breakers[key] = breaker
        self._breakers = breakers
        self._seen = states
        self._dirty = True
        out = [b for b in breakers.values() if b.state != CLOSED]
        excess = len(out) - self.max_ejected()
        if excess > 0:
            out.sort(key=lambda b: b.opened_at)
            for breaker in out[:excess]:
                breaker.restore("restored: the cluster shrank below its ejection cap")
                self.restorations += 1
        self.ejected = sum(1 for b in breakers.values() if b.state != CLOSED)

    def _rebuild(self, now: float) -> None:
        seen = self._seen or ()
        breakers = self._breakers
        self._usable = tuple(key for key in seen if breakers[key].usable(now))
        next_change = math.inf
        for breaker in breakers.values():
            if breaker.state == OPEN and now < breaker.probe_at < next_change:
                next_change = breaker.probe_at
        self._next_change = next_change
        self._dirty = False

    # -- visibility --------------------------------------------------------------------------
    def statistics(self) -> dict[str, Any]:
        return {
            "ejected": self.ejected,
            "max_ejected": self.max_ejected(),
            "deferred": sum(1 for b in self._breakers.values() if b.deferred),
            "deferrals_total": self.deferrals,
            "restorations_total": self.restorations,
            "refusals_total": self.refusals,
            "endpoints": {
                self._label(key): breaker.statistics() for key, breaker in self._breakers.items()
            },
        }

    def __repr__(self) -> str:
        return (
            f"<OutlierDetector {self.ejected}/{len(self._breakers)} ejected "
            f"(max {self.max_ejected()}), {self.refusals} refused>"
        )
