"""The retry budget: retries may add only a share of recent requests (Linkerd, Finagle).

Every request deposits, every retry withdraws, both counted over a sliding window of
`ttl` seconds. A withdrawal succeeds only while

    retries in the window + 1 <= ratio * requests in the window + min_per_s * ttl

so a failing upstream sees at most about (1 + ratio) times the offered load plus a small
floor, however many retries each request would like. A retry withdraws when it is decided,
before its backoff: retries waiting to be sent are already counted.
"""

from __future__ import annotations

from typing import Any

from mesh.resilience.clock import Clock
from mesh.resilience.policy import BudgetPolicy
from mesh.resilience.window import SlidingCounts


class RetryBudget:
    __slots__ = ("_clock", "_reserve", "_window", "policy", "refused", "withdrawn")

    def __init__(self, policy: BudgetPolicy, clock: Clock, slices: int = 10) -> None:
        self.policy = policy
        self._clock = clock
        self._reserve = policy.min_per_s * policy.ttl
        #: first: requests, second: retries.
        self._window = SlidingCounts(policy.ttl, slices)
        self.withdrawn = 0
        self.refused = 0

    def deposit(self, now: float | None = None) -> None:
        """One request (a first attempt) was made (at `now`, when the caller has read it)."""
        self._window.add_first(self._clock() if now is None else now)

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False (and counted) when there is none left."""
        window = self._window
        now = self._clock()
        window.advance(now)
        if window.second + 1 <= self.policy.ratio * window.first + self._reserve:
            window.add_second(now)
            self.withdrawn += 1
            return True
        self.refused += 1
        return False

    def available(self) -> int:
        """Retries that could be withdrawn right now."""
        window = self._window
        window.advance(self._clock())
        return max(0, int(self.policy.ratio * window.first + self._reserve) - window.second)

    def window_start(self) -> float:
        return self._window.window_start(self._clock())

    def statistics(self) -> dict[str, Any]:
        window = self._window
        available = self.available()
        return {
            "ratio": self.policy.ratio,
            "min_per_s": self.policy.min_per_s,
            "ttl": self.policy.ttl,
            "requests_in_window": window.first,
            "retries_in_window": window.second,
            "available": available,
            "retries_total": self.withdrawn,
            "refused_total": self.refused,
        }

    def __repr__(self) -> str:
        window = self._window
        return (
            f"<RetryBudget {window.second} retries / {window.first} requests in "
            f"{self.policy.ttl:g}s, {self.available()} available, {self.refused} refused>"
        )
