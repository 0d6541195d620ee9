"""One endpoint's circuit breaker: failure accrual, backoff, and a single-request probe.

    closed --(N failures in a row, or failure rate over the window)--> open
    open --(backoff elapsed)--> half-open: exactly one real request probes
    half-open --(probe succeeds)--> closed
    half-open --(probe fails)--> open, with a longer backoff

Pure and synchronous: outcomes are reported to it, time comes from the injected clock, and
it only ever answers "may a request go?". Whether a wanted trip may happen is not its call:
`record_failure` returns the reason, and the owner (`OutlierDetector`, which enforces the
cluster's ejection cap) calls `trip` or `defer`. A breaker used alone trips directly.

Requests are admitted with a ticket (`admit`) that comes back with their outcome, so a late
answer from a request admitted before a trip never closes a breaker: only the probe can.
"""

from __future__ import annotations

import random
from typing import Any, Final

from mesh.resilience.clock import Clock, Random
from mesh.resilience.policy import BreakerPolicy
from mesh.resilience.window import SlidingCounts

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half-open"

#: Tickets `admit` hands out and outcomes carry back.
REFUSED: Final = 0
ADMITTED: Final = 1
PROBE: Final = 2

#: Exponents beyond this are capped anyway (2**64 seconds outlives every backoff_max).
_MAX_DOUBLINGS: Final = 64


class CircuitBreaker:
    __slots__ = (
        "_clock",
        "_random",
        "_window",
        "closed_at",
        "consecutive_failures",
        "deferred",
        "label",
        "opened_at",
        "policy",
        "probe_at",
        "probe_in_flight",
        "probes",
        "reason",
        "refused",
        "state",
        "trips",
        "trips_total",
    )

    def __init__(
        self,
        policy: BreakerPolicy,
        clock: Clock,
        rng: Random | None = None,
        label: str = "",
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._random = rng or random.random
        self.label = label
        #: The last state set; `current_state()` also applies the open -> half-open timeout.
        self.state = CLOSED
        #: Why the breaker is in its state ("5 consecutive failures", "probe failed", ...).
        self.reason = ""
        self.consecutive_failures = 0
        self._window = (
            SlidingCounts(policy.rate_window) if policy.failure_rate is not None else None
        )
        #: Ejections in a row without a lasting recovery (sets the backoff).
        self.trips = 0
        self.trips_total = 0
        self.opened_at = 0.0
        self.probe_at = 0.0
        self.closed_at = float("-inf")
        self.probe_in_flight = False
        #: Over its threshold but kept in rotation by the cluster's ejection cap.
        self.deferred = False
        self.probes = 0
        self.refused = 0

    # -- questions ---------------------------------------------------------------------------
    def current_state(self, now: float | None = None) -> str:
        state = self.state
        if state == OPEN and (self._clock() if now is None else now) >= self.probe_at:
            return HALF_OPEN
        return state

    def usable(self, now: float) -> bool:
        """Whether `admit(now)` would let a request through (without claiming anything)."""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN and now < self.probe_at:
            return False
        return not self.probe_in_flight

    def time_to_probe(self, now: float | None = None) -> float | None:
        """Seconds until a probe may go; 0 when one may go now; None when closed or probing."""
        state = self.state
        if state == CLOSED or self.probe_in_flight:
            return None
        if now is None:
            now = self._clock()
        return max(0.0, self.probe_at - now) if state == OPEN else 0.0

    def backoff_base(self, trips: int) -> float:
        """Open time before jitter for the `trips`-th ejection in a row (1-based)."""
        policy = self.policy
        exponent = min(max(trips, 1) - 1, _MAX_DOUBLINGS)
        return min(policy.backoff_max, policy.backoff_min * 2.0**exponent)

    # -- admission ---------------------------------------------------------------------------
    def admit(self, now: float | None = None) -> int:
        """ADMITTED, PROBE (the one request of a half-open breaker) or REFUSED."""
        state = self.state
        if state == CLOSED:
            return ADMITTED
        if state == OPEN:
            if (self._clock() if now is None else now) < self.probe_at:
                self.refused += 1
                return REFUSED
            self.state = HALF_OPEN
        if self.probe_in_flight:
            self.refused += 1
            return REFUSED
        self.probe_in_flight = True
        self.probes += 1
        return PROBE

    def release(self, ticket: int) -> None:
        """The admitted request ended with no verdict on the endpoint (client gone, ...)."""
        if ticket == PROBE and self.probe_in_flight:
            self.probe_in_flight = False

    # -- outcomes ----------------------------------------------------------------------------
    def record_success(self, ticket: int) -> None:
        if ticket == PROBE:
            if self.probe_in_flight:
                self._close(self._clock(), "probe succeeded")
            return
        if self.state != CLOSED:
            return  # admitted before the trip: only the probe decides now
        self.consecutive_failures = 0
        self.deferred = False
        window = self._window
        if window is not None:
            window.add_first(self._clock())

    def record_failure(self, ticket: int) -> str:
        """Count a failure; returns why the breaker should trip now, or "" if it should not.

        A failed probe re-opens the breaker itself (it is ejected already) and returns "".
        """
        if ticket == PROBE:
            if self.probe_in_flight:
                self.trips += 1
                self._open(self._clock(), "probe failed")
            return ""
        if self.state != CLOSED:
            return ""
        self.consecutive_failures += 1
        policy = self.policy
        window = self._window
        if window is not None:
            now = self._clock()
            window.add_first(now)
            window.add_second(now)
        if self.consecutive_failures >= policy.consecutive_failures:
            return f"{self.consecutive_failures} consecutive failures"
        if window is not None and window.first >= policy.rate_min_requests:
            rate = window.second / window.first
            if policy.failure_rate is not None and rate >= policy.failure_rate:
                return f"failure rate {rate:.0%} of {window.first} in {policy.rate_window:g}s"
        return ""

    # -- transitions (the owner decides) ---------------------------------------------------------
    def trip(self, reason: str) -> None:
        """Open: eject this endpoint. A trip after a lasting recovery starts the backoff over."""
        now = self._clock()
        if now - self.closed_at >= self.policy.backoff_max:
            self.trips = 0
        self.trips += 1
        self._open(now, reason)

    def defer(self, reason: str) -> None:
        """Wanted to trip, but the cluster's ejection cap is reached: stays in rotation."""
        self.deferred = True
        self.reason = f"{reason}; ejection deferred (max ejection share reached)"

    def restore(self, reason: str) -> None:
        """Back into rotation without a probe (the ejection cap shrank)."""
        self._close(self._clock(), reason)

    def _open(self, now: float, reason: str) -> None:
        base = self.backoff_base(self.trips)
        duration = max(self.policy.backoff_min, base * (1.0 - self.policy.jitter * self._random()))
        self.state = OPEN
        self.reason = reason
        self.opened_at = now
        self.probe_at = now + duration
        self.probe_in_flight = False
        self.deferred = False
        self.consecutive_failures = 0
        self.trips_total += 1
        if self._window is not None:
            self._window.reset()

    def _close(self, now: float, reason: str) -> None:
        self.state = CLOSED
        self.reason = reason
        self.closed_at = now
        self.probe_in_flight = False
        self.deferred = False
        self.consecutive_failures = 0
        if self._window is not None:
            self._window.reset()

    # -- visibility --------------------------------------------------------------------------
    def statistics(self) -> dict[str, Any]:
        now = self._clock()
        window = self._window
        return {
            "state": self.current_state(now),
            "reason": self.reason,
            "time_to_probe": self.time_to_probe(now),
            "probe_in_flight": self.probe_in_flight,
            "consecutive_failures": self.consecutive_failures,
            "failure_rate": (
                None if window is None or not window.first else window.second / window.first
            ),
            "deferred": self.deferred,
            "times_ejected": self.trips,
            "ejections_total": self.trips_total,
            "probes_total": self.probes,
            "refused_total": self.refused,
        }

    def __repr__(self) -> str:
        now = self._clock()
        state = self.current_state(now)
        parts = [f"<CircuitBreaker {self.label}" if self.label else "<CircuitBreaker", state]
        if self.reason:
            parts.append(f"({self.reason})")
        wait = self.time_to_probe(now)
        if state == OPEN and wait is not None:
            parts.append(f"probe in {wait:.1f}s")
        elif self.probe_in_flight:
            parts.append("probe in flight")
        if self.trips:
            parts.append(f"times_ejected={self.trips}")
        return " ".join(parts) + ">"
