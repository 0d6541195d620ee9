"""One endpoint's circuit breaker, driven by outcomes and an injected clock.

The state machine test checks, after any sequence of requests, outcomes and clock moves:
never more than one probe in half-open; an open breaker admits nothing; every open time
lies within [backoff_min, backoff_max] and its base grows (doubling) until capped; only a
successful probe closes it.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mesh.resilience.breaker import (
    ADMITTED,
    CLOSED,
    HALF_OPEN,
    OPEN,
    PROBE,
    REFUSED,
    CircuitBreaker,
)
from mesh.resilience.policy import BreakerPolicy
from tests.support.fakes import ManualClock

pytestmark = pytest.mark.timeout(60)


def breaker(clock: ManualClock, **policy: Any) -> CircuitBreaker:
    """A breaker without jitter (the random draw is 0: every open time is its base)."""
    return CircuitBreaker(BreakerPolicy(**policy), clock, rng=lambda: 0.0, label="10.0.0.1:80")


def fail(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        reason = b.record_failure(b.admit())
        if reason:
            b.trip(reason)


def test_trips_after_consecutive_failures_and_refuses_while_open() -> None:
    clock = ManualClock()
    b = breaker(clock)
    fail(b, 4)
    assert b.state == CLOSED
    b.record_success(b.admit())
    fail(b, 4)
    assert b.state == CLOSED, "a success in between resets the count"
    fail(b, 1)
    assert b.state == OPEN
    assert b.reason == "5 consecutive failures"
    assert b.admit() == REFUSED
    assert b.time_to_probe() == pytest.approx(1.0)


def test_half_open_lets_exactly_one_probe_and_success_closes() -> None:
    clock = ManualClock()
    b = breaker(clock)
    fail(b, 5)
    clock.advance(1.0)
    assert b.current_state() == HALF_OPEN
    assert b.time_to_probe() == 0.0
    probe = b.admit()
    assert probe == PROBE
    assert b.admit() == REFUSED, "a second request while the probe is out"
    assert b.time_to_probe() is None
    b.record_success(probe)
    assert b.state == CLOSED
    assert b.reason == "probe succeeded"
    assert b.admit() == ADMITTED


def test_failed_probe_reopens_with_a_longer_backoff_capped() -> None:
    clock = ManualClock()
    b = breaker(clock, backoff_min=1.0, backoff_max=5.0)
    fail(b, 5)
    waits = []
    for _ in range(5):
        waits.append(b.probe_at - clock.now)
        clock.advance(b.probe_at - clock.now)
        b.record_failure(b.admit())
        assert b.reason == "probe failed"
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_late_answers_from_before_the_trip_do_not_close_it() -> None:
    clock = ManualClock()
    b = breaker(clock)
    early = b.admit()
    fail(b, 5)
    clock.advance(1.0)
    probe = b.admit()
    b.record_success(early)
    assert b.state == HALF_OPEN and b.probe_in_flight
    b.record_failure(early)
    assert b.state == HALF_OPEN and b.probe_in_flight
    b.record_success(probe)
    assert b.state == CLOSED


def test_released_probe_can_be_taken_again() -> None:
    clock = ManualClock()
    b = breaker(clock)
    fail(b, 5)
    clock.advance(1.0)
    probe = b.admit()
    b.release(probe)
    assert b.admit() == PROBE


def test_flapping_endpoint_keeps_growing_its_backoff_until_it_stays_healthy() -> None:
    clock = ManualClock()
    b = breaker(clock, backoff_min=1.0, backoff_max=60.0)
    fail(b, 5)
    clock.advance(1.0)
    b.record_success(b.admit())
    clock.advance(10.0)  # healthy for a while, but less than backoff_max
    fail(b, 5)
    assert b.trips == 2 and b.probe_at - clock.now == 2.0
    clock.advance(2.0)
    b.record_success(b.admit())
    clock.advance(60.0)  # healthy for backoff_max: the slate is clean
    fail(b, 5)
    assert b.trips == 1 and b.probe_at - clock.now == 1.0


def test_jitter_stays_within_bounds() -> None:
    clock = ManualClock()
    b = CircuitBreaker(BreakerPolicy(jitter=0.5), clock, rng=lambda: 0.999)
    fail(b, 5)
    for _ in range(8):
        base = b.backoff_base(b.trips)
        wait = b.probe_at - clock.now
        assert max(1.0, base * 0.5) <= wait <= base
        clock.advance(wait)
        b.record_failure(b.admit())


def test_failure_rate_trips_once_enough_outcomes_are_seen() -> None:
    clock = ManualClock()
    b = breaker(clock, consecutive_failures=100, failure_rate=0.5, rate_min_requests=10)
    for _ in range(4):
        b.record_success(b.admit())
        assert not b.record_failure(b.admit())
    b.record_success(b.admit())
    reason = b.record_failure(b.admit())
    assert reason == "failure rate 50% of 10 in 10s"
    clock.advance(11.0)
    assert not b.record_failure(b.admit()), "old outcomes left the window"


def test_deferred_breaker_stays_closed_and_says_why() -> None:
    clock = ManualClock()
    b = breaker(clock)
    for _ in range(5):
        reason = b.record_failure(b.admit())
    b.defer(reason)
    assert b.state == CLOSED and b.deferred
    assert "max ejection share" in b.reason
    assert b.record_failure(b.admit()) == "6 consecutive failures"


def test_statistics_and_repr() -> None:
    clock = ManualClock()
    b = breaker(clock)
    assert repr(b) == "<CircuitBreaker 10.0.0.1:80 closed>"
    fail(b, 5)
    clock.advance(0.25)
    assert repr(b) == (
        "<CircuitBreaker 10.0.0.1:80 open (5 consecutive failures) probe in 0.8s times_ejected=1>"
    )
    stats = b.statistics()
    assert stats["state"] == "open"
    assert stats["reason"] == "5 consecutive failures"
    assert stats["time_to_probe"] == pytest.approx(0.75)
    assert stats["times_ejected"] == 1
    clock.advance(1.0)
    b.admit()
    assert "half-open" in repr(b) and "probe in flight" in repr(b)


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="consecutive_failures"):
        BreakerPolicy(consecutive_failures=0)
    with pytest.raises(ValueError, match="backoff_max"):
        BreakerPolicy(backoff_min=5, backoff_max=1)
    with pytest.raises(ValueError, match="failure_rate"):
        BreakerPolicy(failure_rate=1.5)


class BreakerMachine(RuleBasedStateMachine):
    """Requests, their outcomes and clock moves in any order."""

    @initialize(
        seed=st.integers(0, 2**32),
        threshold=st.integers(1, 4),
        backoff_max=st.sampled_from([1.0, 3.0, 8.0, 60.0]),
        jitter=st.sampled_from([0.0, 0.5, 1.0]),
        rate=st.sampled_from([None, 0.5]),
    )
    def configure(
        self, seed: int, threshold: int, backoff_max: float, jitter: float, rate: float | None
    ) -> None:
        self.policy = BreakerPolicy(
            consecutive_failures=threshold,
            failure_rate=rate,
            rate_min_requests=4,
            backoff_min=1.0,
            backoff_max=backoff_max,
            jitter=jitter,
        )
        self.clock = ManualClock(0.0)
        self.breaker = CircuitBreaker(self.policy, self.clock, random.Random(seed).random)
        self.outstanding: dict[int, int] = {}  # request id -> ticket
        self.next_id = 0
        self.last_base = 0.0
        self.last_open = (-1.0, -1.0)

    def _opened(self) -> None:
        """Checks every new open period: bounds, and growth while trips accumulate."""
        b = self.breaker
        period = (b.opened_at, b.probe_at)
        if b.state != OPEN or period == self.last_open:
            return
        self.last_open = period
        wait = b.probe_at - b.opened_at
        base = b.backoff_base(b.trips)
        # probe_at - opened_at is a difference of clock readings: allow float rounding.
        assert self.policy.backoff_min - 1e-9 <= wait <= self.policy.backoff_max + 1e-9
        assert max(self.policy.backoff_min, (1 - self.policy.jitter) * base) - 1e-9 <= wait
        assert wait <= base + 1e-9
        if b.trips > 1:
            assert base >= self.last_base, "backoff shrank while failures continued"
        self.last_base = base

    def _take(self, pick: int) -> int | None:
        """The ticket of one outstanding request (removed), or None when there is none."""
        if not self.outstanding:
            return None
        key = sorted(self.outstanding)[pick % len(self.outstanding)]
        return self.outstanding.pop(key)

    @rule()
    def send(self) -> None:
        b = self.breaker
        before = b.current_state()
        probing = b.probe_in_flight
        ticket = b.admit()
        if before == OPEN:
            assert ticket == REFUSED, "an open breaker let a request through"
        if before == HALF_OPEN and probing:
            assert ticket == REFUSED, "a second probe in half-open"
        if before == CLOSED:
            assert ticket == ADMITTED
        self.next_id += 1
        if ticket != REFUSED:
            self.outstanding[self.next_id] = ticket

    @rule(pick=st.integers(0, 100), ok=st.booleans())
    def finish(self, pick: int, ok: bool) -> None:
        ticket = self._take(pick)
        if ticket is None:
            return
        b = self.breaker
        was = b.state
        if ok:
            b.record_success(ticket)
            if was != CLOSED:
                assert (b.state == CLOSED) == (ticket == PROBE)
                if ticket == PROBE:
                    event("probe closed the breaker")
        else:
            reason = b.record_failure(ticket)
            if reason:
                assert was == CLOSED
                b.trip(reason)
                event("tripped")
            if ticket == PROBE:
                assert b.state == OPEN and b.reason == "probe failed"
                event("probe failed")
        self._opened()

    @rule(pick=st.integers(0, 100))
    def give_up(self, pick: int) -> None:
        ticket = self._take(pick)
        if ticket is not None:
            self.breaker.release(ticket)

    @rule(seconds=st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.5, 10.0, 61.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def at_most_one_probe(self) -> None:
        probes = sum(1 for t in self.outstanding.values() if t == PROBE)
        assert probes <= 1
        assert self.breaker.probe_in_flight == (probes == 1)

    @invariant()
    def closed_means_no_probe_pending(self) -> None:
        b = self.breaker
        if b.state == CLOSED:
            assert not b.probe_in_flight
            assert b.time_to_probe() is None


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
