"""Outlier ejection across a cluster: the endpoint breakers under Envoy's cluster rules.

The state machine test changes the endpoint set, sends requests through `candidates()` and
`admit()` as the balancer does, reports outcomes and moves the clock. After every step:
never more ejected than the cap; `candidates()` never offers an endpoint that is open or
whose probe is out; at most one probe per endpoint; a repeated ejection without recovery
is never shorter (in base) than the one before; recovery closes the breaker.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mesh.resilience.breaker import CLOSED, HALF_OPEN, OPEN, PROBE, REFUSED
from mesh.resilience.outlier import OutlierDetector
from mesh.resilience.policy import BreakerPolicy, OutlierPolicy
from tests.support.fakes import ManualClock

pytestmark = pytest.mark.timeout(60)


def detector(clock: ManualClock, share: float = 0.1, threshold: int = 5) -> OutlierDetector[str]:
    return OutlierDetector(
        BreakerPolicy(consecutive_failures=threshold, jitter=0.0),
        OutlierPolicy(max_ejection_share=share),
        clock,
    )


def endpoints(n: int) -> tuple[str, ...]:
    return tuple(f"10.0.0.{i}:80" for i in range(n))


def fail(d: OutlierDetector[str], key: str, times: int) -> None:
    for _ in range(times):
        d.record(key, d.admit(key), True)


def test_nothing_ejected_returns_the_clusters_own_tuple() -> None:
    clock = ManualClock()
    d = detector(clock)
    states = endpoints(3)
    assert d.candidates(states) is states
    fail(d, states[0], 4)
    assert d.candidates(states) is states


def test_cap_is_a_share_of_the_cluster_but_at_least_one() -> None:
    clock = ManualClock()
    d = detector(clock)
    states = endpoints(20)
    d.candidates(states)
    assert d.max_ejected() == 2
    for key in states[:3]:
        fail(d, key, 5)
    assert d.ejected == 2
    assert d.candidates(states) == states[2:]
    third = d.breaker(states[2])
    assert third is not None and third.deferred and third.state == CLOSED
    assert "max ejection share" in third.reason
    small = endpoints(3)
    d2 = detector(clock)
    d2.candidates(small)
    assert d2.max_ejected() == 1


def test_deferred_endpoint_is_ejected_once_there_is_room() -> None:
    clock = ManualClock()
    d = detector(clock)
    states = endpoints(10)
    d.candidates(states)
    fail(d, states[0], 5)
    fail(d, states[1], 5)
    assert d.ejected == 1 and d.deferrals == 1
    clock.advance(1.0)
    assert states[0] in d.candidates(states)
    d.record(states[0], d.admit(states[0]), False)  # the probe succeeds
    assert d.ejected == 0
    fail(d, states[1], 1)  # still over its threshold: out on the next failure
    assert d.ejected == 1
    assert states[1] not in d.candidates(states)


def test_single_endpoint_all_ejected_then_one_probe_then_recovery() -> None:
    clock = ManualClock()
    d = detector(clock)
    states = endpoints(1)
    d.candidates(states)
    fail(d, states[0], 5)
    assert d.candidates(states) == ()
    assert d.next_probe_in() == pytest.approx(1.0)
    clock.advance(1.0)
    assert d.candidates(states) == states
    ticket = d.admit(states[0])
    assert ticket == PROBE
    assert d.candidates(states) == (), "only the probe goes while it is out"
    d.record(states[0], ticket, False)
    assert d.candidates(states) is states


def test_ejection_time_grows_while_probes_fail() -> None:
    clock = ManualClock()
    d = detector(clock)
    states = endpoints(1)
    d.candidates(states)
    fail(d, states[0], 5)
    waits = []
    for _ in range(8):
        waits.append(d.next_probe_in())
        clock.advance(d.next_probe_in())
        assert d.candidates(states) == states
        d.record(states[0], d.admit(states[0]), True)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_shrinking_cluster_restores_the_longest_ejected_beyond_the_cap() -> None:
    clock = ManualClock()
    d = detector(clock, share=0.2)
    states = endpoints(10)
    d.candidates(states)
    fail(d, states[0], 5)
    clock.advance(0.1)
    fail(d, states[1], 5)
    assert d.ejected == 2
    smaller = states[:5]  # cap now 1
    candidates = d.candidates(smaller)
    assert d.ejected == 1 and d.restorations == 1
    assert states[0] in candidates and states[1] not in candidates
    first = d.breaker(states[0])
    assert first is not None and first.reason.startswith("restored")


def test_endpoints_leaving_and_returning_start_fresh() -> None:
    clock = ManualClock()
    d = detector(clock)
    states = endpoints(2)
    d.candidates(states)
    fail(d, states[0], 5)
    d.candidates(states[1:])
    assert d.ejected == 0
    d.candidates(states)
    assert d.ejected == 0
    d.record("unknown", 1, True)  # an endpoint that left meanwhile: ignored


def test_statistics_and_repr() -> None:
    clock = ManualClock()
    d = detector(clock)
    states = endpoints(2)
    d.candidates(states)
    fail(d, states[0], 5)
    stats = d.statistics()
    assert stats["ejected"] == 1 and stats["max_ejected"] == 1
    assert stats["endpoints"]["10.0.0.0:80"]["state"] == "open"
    assert stats["endpoints"]["10.0.0.0:80"]["time_to_probe"] == pytest.approx(1.0)
    assert stats["endpoints"]["10.0.0.1:80"]["state"] == "closed"
    assert repr(d) == "<OutlierDetector 1/2 ejected (max 1), 0 refused>"


class OutlierMachine(RuleBasedStateMachine):
    @initialize(
        seed=st.integers(0, 2**32),
        n=st.integers(1, 6),
        share=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]),
        threshold=st.integers(1, 3),
    )
    def configure(self, seed: int, n: int, share: float, threshold: int) -> None:
        self.clock = ManualClock(0.0)
        self.rng = random.Random(seed)
        self.detector: OutlierDetector[str] = OutlierDetector(
            BreakerPolicy(consecutive_failures=threshold, backoff_max=16.0),
            OutlierPolicy(max_ejection_share=share),
            self.clock,
            self.rng.random,
        )
        self.pool = endpoints(8)
        self.states = self.pool[:n]
        self.outstanding: list[tuple[str, int]] = []
        self.bases: dict[str, float] = {}

    @rule(start=st.integers(0, 7), n=st.integers(1, 8))
    def rediscover(self, start: int, n: int) -> None:
        keys = self.pool[start:] + self.pool[:start]
        self.states = tuple(keys[:n])
        # The sidecar keys breakers by endpoint-state object, and an endpoint that leaves
        # and comes back gets a new one: requests still out for it report to a key the
        # detector no longer knows.
        self.outstanding = [
            (k if k in self.states else f"gone:{k}", t) for k, t in self.outstanding
        ]

    @rule(pick=st.integers(0, 100))
    def send(self, pick: int) -> None:
        d = self.detector
        candidates = d.candidates(self.states)
        for key in candidates:
            b = d.breaker(key)
            assert b is not None
            assert not (b.state == OPEN and self.clock.now < b.probe_at), "offered an open one"
            assert not b.probe_in_flight, "offered an endpoint whose probe is out"
        if not candidates:
            event("no endpoint usable")
            for key in self.states:
                b = d.breaker(key)
                assert b is not None and not b.usable(self.clock.now)
            return
        key = candidates[pick % len(candidates)]
        ticket = d.admit(key)
        assert ticket != REFUSED
        if ticket == PROBE:
            event("probe")
        self.outstanding.append((key, ticket))

    @rule(pick=st.integers(0, 100), ok=st.booleans())
    def finish(self, pick: int, ok: bool) -> None:
        if not self.outstanding:
            return
        key, ticket = self.outstanding.pop(pick % len(self.outstanding))
        d = self.detector
        b = d.breaker(key)
        opened_before = None if b is None else (b.state, b.opened_at)
        d.record(key, ticket, not ok)
        if b is None or d.breaker(key) is not b:
            return
        if ticket == PROBE and ok:
            assert b.state == CLOSED, "a successful probe must close"
            event("recovered")
        if b.state == OPEN and (b.state, b.opened_at) != opened_before:
            base = b.backoff_base(b.trips)
            if b.trips > 1:
                # Ejected again without a lasting recovery: never shorter than last time.
                assert base >= self.bases.get(key, 0.0), "ejection time shrank"
            self.bases[key] = base
            event("ejected again" if b.trips > 1 else "ejected")

    @rule(pick=st.integers(0, 100), ok=st.booleans())
    def exchange(self, pick: int, ok: bool) -> None:
        """One request sent and answered before anything else happens (the common case)."""
        self.send(pick)
        if self.outstanding:
            self.finish(len(self.outstanding) - 1, ok)

    @rule(pick=st.integers(0, 100))
    def give_up(self, pick: int) -> None:
        if self.outstanding:
            key, ticket = self.outstanding.pop(pick % len(self.outstanding))
            self.detector.release(key, ticket)

    @rule(seconds=st.sampled_from([0.1, 1.0, 2.0, 5.0, 20.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def never_beyond_the_cap(self) -> None:
        d = self.detector
        d.candidates(self.states)
        out = [k for k in self.states if (b := d.breaker(k)) is not None and b.state != CLOSED]
        assert d.ejected == len(out)
        assert d.ejected <= d.max_ejected()
        share = d.outlier_policy.max_ejection_share
        assert d.max_ejected() == max(1, int(share * len(self.states) + 1e-9))

    @invariant()
    def one_probe_per_endpoint(self) -> None:
        d = self.detector
        for key in self.states:
            b = d.breaker(key)
            assert b is not None
            probes = sum(1 for k, t in self.outstanding if k == key and t == PROBE)
            assert probes <= 1
            if b.state in (OPEN, HALF_OPEN) and probes == 0:
                assert not b.probe_in_flight


TestOutlierMachine = OutlierMachine.TestCase
TestOutlierMachine.settings = settings(max_examples=300, stateful_step_count=80, deadline=None)
