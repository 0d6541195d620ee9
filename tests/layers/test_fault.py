"""The FaultInjection layer: aborts answer `fault-injected`, delays honour the deadline,
and fault headers count only where the policy trusts them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from mesh.errors import FaultInjected, UpstreamTimeout
from mesh.layers.fault import FaultInjection
from mesh.resilience.policy import FaultPolicy
from mesh.respond import error_response
from tests.support.fakes import ManualClock, Scripted, make_request, run

pytestmark = pytest.mark.timeout(10)


class Setup:
    def __init__(self, policy: FaultPolicy, draw: float = 0.0) -> None:
        self.clock = ManualClock()
        self.sleeps: list[float] = []
        self.inner = Scripted()
        self.layer = FaultInjection(
            self.inner, policy, rng=lambda: draw, clock=self.clock, sleep=self.sleep()
        )

    def sleep(self) -> Callable[[float], Awaitable[None]]:
        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.clock.advance(seconds)

        return sleep


def test_abort_answers_fault_injected_with_the_configured_status() -> None:
    s = Setup(FaultPolicy(abort_percent=100, abort_status=502))
    with pytest.raises(FaultInjected) as caught:
        run(s.layer.handle(make_request()))
    answer = error_response(caught.value)
    assert answer.status == 502
    assert (b"x-mesh-error", b"fault-injected") in answer.headers
    assert not s.inner.seen


def test_percentages_use_the_random_draw() -> None:
    policy = FaultPolicy(abort_percent=10)
    assert run(Setup(policy, draw=0.5).layer.handle(make_request())).status == 200
    with pytest.raises(FaultInjected):
        run(Setup(policy, draw=0.05).layer.handle(make_request()))


def test_delay_then_forward() -> None:
    s = Setup(FaultPolicy(delay_percent=100, delay=0.2))
    assert run(s.layer.handle(make_request())).status == 200
    assert s.sleeps == [0.2]
    assert len(s.inner.seen) == 1


def test_delay_past_the_deadline_times_out_at_the_deadline() -> None:
    s = Setup(FaultPolicy(delay_percent=100, delay=5.0))
    request = make_request()
    request.deadline = s.clock.now + 0.3
    with pytest.raises(UpstreamTimeout):
        run(s.layer.handle(request))
    assert s.sleeps == [pytest.approx(0.3)]
    assert not s.inner.seen


def test_headers_are_ignored_unless_trusted() -> None:
    headers = [(b"x-mesh-fault-abort", b"503"), (b"accept", b"*/*")]
    s = Setup(FaultPolicy(abort_percent=0))
    assert run(s.layer.handle(make_request(headers=headers))).status == 200
    assert s.inner.seen[0].headers == headers, "untrusted: not read, not touched"


def test_trusted_headers_act_and_are_consumed() -> None:
    s = Setup(FaultPolicy(honour_headers=True))
    headers = [(b"x-mesh-fault-delay-ms", b"100"), (b"accept", b"*/*")]
    assert run(s.layer.handle(make_request(headers=headers))).status == 200
    assert s.sleeps == [0.1]
    assert s.inner.seen[0].headers == [(b"accept", b"*/*")]
    with pytest.raises(FaultInjected):
        run(s.layer.handle(make_request(headers=[(b"x-mesh-fault-abort", b"500")])))


def test_statistics_and_repr() -> None:
    s = Setup(FaultPolicy(abort_percent=100))
    with pytest.raises(FaultInjected):
        run(s.layer.handle(make_request()))
    assert s.layer.statistics()["aborted_total"] == 1
    assert repr(s.layer).startswith("<FaultInjection <FaultInjector delay 0%")
