"""The retry budget: retries never exceed ratio x recent requests + min_per_s x ttl.

A hypothesis state machine deposits, withdraws and moves an injected clock, and checks
every withdrawal against its own log of events (not the budget's counters): granted only
when the window still has room, refused only when it has none.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mesh.resilience.budget import RetryBudget
from mesh.resilience.policy import BudgetPolicy
from tests.support.fakes import ManualClock

pytestmark = pytest.mark.timeout(60)


def test_floor_lets_a_quiet_upstream_retry() -> None:
    clock = ManualClock()
    budget = RetryBudget(BudgetPolicy(), clock)
    granted = sum(budget.try_withdraw() for _ in range(150))
    assert granted == 100  # 10/s x 10 s, no requests yet
    assert budget.refused == 50


def test_ratio_of_requests_without_floor() -> None:
    clock = ManualClock()
    budget = RetryBudget(BudgetPolicy(ratio=0.2, min_per_s=0), clock)
    for _ in range(1000):
        budget.deposit()
    granted = sum(budget.try_withdraw() for _ in range(1000))
    assert granted == 200
    assert budget.statistics()["available"] == 0


def test_requests_leave_the_window_after_ttl() -> None:
    clock = ManualClock(0.0)
    budget = RetryBudget(BudgetPolicy(ratio=0.5, min_per_s=0, ttl=10), clock)
    for _ in range(10):
        budget.deposit()
    assert budget.available() == 5
    clock.advance(10.0)
    assert budget.available() == 0
    assert not budget.try_withdraw()


def test_retries_leave_the_window_too() -> None:
    clock = ManualClock(0.0)
    budget = RetryBudget(BudgetPolicy(ratio=0, min_per_s=1, ttl=10), clock)
    assert sum(budget.try_withdraw() for _ in range(20)) == 10
    clock.advance(10.0)
    assert sum(budget.try_withdraw() for _ in range(20)) == 10


def test_statistics_and_repr() -> None:
    clock = ManualClock()
    budget = RetryBudget(BudgetPolicy(ratio=0.2, min_per_s=0), clock)
    for _ in range(10):
        budget.deposit()
    assert budget.try_withdraw()
    stats = budget.statistics()
    assert stats["requests_in_window"] == 10
    assert stats["retries_in_window"] == 1
    assert stats["available"] == 1
    assert repr(budget) == "<RetryBudget 1 retries / 10 requests in 10s, 1 available, 0 refused>"


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="ttl"):
        BudgetPolicy(ttl=0)
    with pytest.raises(ValueError, match="ratio"):
        BudgetPolicy(ratio=-0.1)


class BudgetMachine(RuleBasedStateMachine):
    """Random deposits, withdrawals and clock moves."""

    @initialize(
        start=st.integers(0, 100),
        ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
        min_per_s=st.sampled_from([0.0, 0.5, 1.0, 10.0]),
        ttl=st.sampled_from([1.0, 4.0, 8.0]),
    )
    def configure(self, start: int, ratio: float, min_per_s: float, ttl: float) -> None:
        self.policy = BudgetPolicy(ratio=ratio, min_per_s=min_per_s, ttl=ttl)
        self.clock = ManualClock(start / 4)
        # Eight slices: slice edges and clock steps are exact binary fractions, so our log
        # and the budget agree on which slice an event at an edge belongs to.
        self.budget = RetryBudget(self.policy, self.clock, slices=8)
        self.requests: list[float] = []
        self.retries: list[float] = []

    def _counts(self) -> tuple[int, int]:
        """Events in the window the budget says it counts, from our own log."""
        start = self.budget.window_start()
        now = self.clock.now
        return (
            sum(1 for t in self.requests if start <= t <= now),
            sum(1 for t in self.retries if start <= t <= now),
        )

    def _limit(self, requests: int) -> float:
        return self.policy.ratio * requests + self.policy.min_per_s * self.policy.ttl

    @rule(count=st.integers(1, 20))
    def deposit(self, count: int) -> None:
        for _ in range(count):
            self.budget.deposit()
            self.requests.append(self.clock.now)

    @rule()
    def withdraw(self) -> None:
        requests, retries = self._counts()
        granted = self.budget.try_withdraw()
        if granted:
            self.retries.append(self.clock.now)
            assert retries + 1 <= self._limit(requests), "a retry beyond the budget"
        else:
            assert retries + 1 > self._limit(requests), "refused with budget left"

    @rule(quarters=st.integers(0, 60))
    def advance(self, quarters: int) -> None:
        self.clock.advance(quarters / 4)

    @invariant()
    def window_covers_at_most_ttl(self) -> None:
        start = self.budget.window_start()
        assert self.clock.now - self.policy.ttl <= start <= self.clock.now

    @invariant()
    def counters_match_the_log(self) -> None:
        stats = self.budget.statistics()
        assert (stats["requests_in_window"], stats["retries_in_window"]) == self._counts()


TestBudgetMachine = BudgetMachine.TestCase
TestBudgetMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
