"""Fault injection decisions: shares from the policy, overrides from trusted headers."""

from __future__ import annotations

import random

import pytest

from mesh.resilience.fault import Fault, FaultInjector
from mesh.resilience.policy import FaultPolicy

pytestmark = pytest.mark.timeout(10)


def test_inactive_policy_decides_nothing() -> None:
    policy = FaultPolicy()
    assert not policy.active
    assert FaultInjector(policy).decide() is None


def test_shares_follow_the_policy() -> None:
    injector = FaultInjector(
        FaultPolicy(delay_percent=30, delay=0.2, abort_percent=10, abort_status=502),
        random.Random(7).random,
    )
    faults = [injector.decide() for _ in range(10_000)]
    delayed = sum(1 for f in faults if f is not None and f.delay == 0.2)
    aborted = sum(1 for f in faults if f is not None and f.abort_status == 502)
    assert 2700 < delayed < 3300
    assert 800 < aborted < 1200
    assert injector.statistics()["delayed_total"] == delayed
    assert injector.statistics()["aborted_total"] == aborted


def test_headers_override_the_policy() -> None:
    injector = FaultInjector(FaultPolicy(honour_headers=True), lambda: 0.5)
    assert injector.decide([(b"x-mesh-fault-abort", b"503")]) == Fault(0.0, 503)
    assert injector.decide([(b"x-mesh-fault-delay-ms", b"250")]) == Fault(0.25, 0)
    assert (
        injector.decide([(b"x-mesh-fault-abort", b"500"), (b"x-mesh-fault-abort-percent", b"40")])
        is None
    ), "0.5 draws above 40 %"
    assert injector.decide([(b"x-mesh-fault-abort-percent", b"100")]) is None, "percent alone"


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-mesh-fault-abort", b"200")],
        [(b"x-mesh-fault-abort", b"503.5")],
        [(b"x-mesh-fault-abort", b"nan")],
        [(b"x-mesh-fault-delay-ms", b"-5")],
        [(b"x-mesh-fault-delay-ms", b"\xff")],
    ],
)
def test_unparsable_headers_are_ignored(headers: list[tuple[bytes, bytes]]) -> None:
    assert FaultInjector(FaultPolicy(honour_headers=True)).decide(headers) is None


def test_header_delays_are_capped() -> None:
    injector = FaultInjector(FaultPolicy(honour_headers=True), lambda: 0.0)
    assert injector.decide([(b"x-mesh-fault-delay-ms", b"99999999")]) == Fault(60.0, 0)


def test_repr() -> None:
    injector = FaultInjector(FaultPolicy(abort_percent=5))
    assert repr(injector) == (
        "<FaultInjector delay 0% x 0s, abort 5% -> 503, headers ignored, delayed=0 aborted=0>"
    )


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="abort_status"):
        FaultPolicy(abort_status=200)
    with pytest.raises(ValueError, match="delay_percent"):
        FaultPolicy(delay_percent=101)
