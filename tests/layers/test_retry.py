"""The Retry layer over a scripted inner handler, driven inline with an injected clock.

Checks the rules of RELIABILITY.md row 31 at the layer (POST only when never sent, bodies
replayed byte-exact up to 64 KiB and never beyond), the budget and retry gauge, per-try
deadlines, Retry-After, and the cross-hop headers each attempt carries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from mesh.cluster import EndpointState
from mesh.errors import UpstreamConnectFailed, UpstreamReset, UpstreamTimeout
from mesh.http1.body import Body
from mesh.http1.message import Headers
from mesh.layers.healthy_balance import HealthyBalance
from mesh.layers.retry import Retry
from mesh.resilience.budget import RetryBudget
from mesh.resilience.latency import AttemptLatency
from mesh.resilience.limits import ResourceGauge
from mesh.resilience.outlier import OutlierDetector
from mesh.resilience.policy import BreakerPolicy, BudgetPolicy, OutlierPolicy, RetryPolicy
from mesh.stack import Handler
from tests.layers.clusters import FirstChoice, cluster_of
from tests.support.fakes import ManualClock, Outcome, Scripted, make_request, response, run

pytestmark = pytest.mark.timeout(10)


class Setup:
    def __init__(
        self,
        *script: Outcome,
        policy: RetryPolicy | None = None,
        budget: BudgetPolicy | None = None,
        gauge: ResourceGauge | None = None,
        latency: AttemptLatency | None = None,
        inner: Handler | None = None,
    ) -> None:
        self.clock = ManualClock()
        self.sleeps: list[float] = []
        self.inner = Scripted(list(script))
        self.budget = RetryBudget(budget or BudgetPolicy(), self.clock)
        self.layer = Retry(
            inner or self.inner,
            policy or RetryPolicy(),
            self.budget,
            latency=latency,
            retries_gauge=gauge,
            clock=self.clock,
            sleep=self.sleep(),
            wall_clock=lambda: 1_700_000_000.0,
        )

    def sleep(self) -> Callable[[float], Awaitable[None]]:
        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.clock.advance(seconds)

        return sleep

    def header(self, attempt: int, name: bytes) -> bytes | None:
        return dict(self.inner.seen[attempt].headers).get(name)


def test_get_is_retried_after_a_gateway_error() -> None:
    s = Setup(response(503))
    answer = run(s.layer.handle(make_request()))
    assert answer.status == 200
    assert [seen.attempt for seen in s.inner.seen] == [1, 2]
    assert s.header(0, b"x-mesh-attempt") == b"1"
    assert s.header(1, b"x-mesh-attempt") == b"2"
    assert len(s.sleeps) == 1 and 0 <= s.sleeps[0] <= 0.025
    assert s.layer.retries == 1


def test_the_last_failure_is_answered_when_retries_run_out() -> None:
    s = Setup(response(503), response(502))
    assert run(s.layer.handle(make_request())).status == 502
    assert s.layer.not_retried == {"attempts-exhausted": 1}


def test_post_is_not_retried_after_a_reset() -> None:
    s = Setup(UpstreamReset("gone before the head"))
    with pytest.raises(UpstreamReset):
        run(s.layer.handle(make_request(b"POST", body=b"order=1")))
    assert len(s.inner.seen) == 1, "the app may have acted: sent once"
    assert s.layer.not_retried == {"not-retryable": 1}


def test_post_is_retried_when_the_connect_failed_with_the_same_body() -> None:
    payload = bytes(range(256)) * 256  # 64 KiB exactly, every byte value
    s = Setup(UpstreamConnectFailed("refused"))
    answer = run(s.layer.handle(make_request(b"POST", body=payload)))
    assert answer.status == 200
    assert [seen.body for seen in s.inner.seen] == [payload, payload]


def test_chunked_body_that_has_all_arrived_is_replayed() -> None:
    s = Setup(UpstreamConnectFailed("refused"))
    request = make_request(b"PUT", body=b"abc", chunked=True)
    assert run(s.layer.handle(request)).status == 200
    assert [seen.body for seen in s.inner.seen] == [b"abc", b"abc"]


def test_body_over_64_kib_goes_once_and_is_never_retried() -> None:
    s = Setup(UpstreamConnectFailed("refused"))
    with pytest.raises(UpstreamConnectFailed):
        run(s.layer.handle(make_request(b"PUT", body=b"x" * (64 * 1024 + 1))))
    assert len(s.inner.seen) == 1
    assert s.layer.not_retried == {"body-not-replayable": 1}
    assert s.header(0, b"x-mesh-attempt") is None, "a hop that cannot retry says nothing"


def test_streaming_body_goes_once() -> None:
    s = Setup(UpstreamConnectFailed("refused"))
    request = make_request(b"PUT")
    body = Body()
    body.feed(b"first part, more to come")
    request.body = body
    with pytest.raises(UpstreamConnectFailed):
        run(s.layer.handle(request))
    assert len(s.inner.seen) == 1


def test_budget_refusal_leaves_the_failure_standing_and_says_so() -> None:
    s = Setup(UpstreamConnectFailed("refused"), budget=BudgetPolicy(ratio=0, min_per_s=0))
    with pytest.raises(UpstreamConnectFailed) as caught:
        run(s.layer.handle(make_request()))
    assert caught.value.reason == "upstream-connect-failed"
    assert caught.value.detail == "refused (not retried: retry-budget-exhausted)"
    assert s.layer.not_retried == {"retry-budget-exhausted": 1}
    assert s.budget.refused == 1


def test_budget_caps_retries_at_a_share_of_requests() -> None:
    s = Setup(*[response(503)] * 400, budget=BudgetPolicy(ratio=0.2, min_per_s=0))
    for _ in range(200):
        run(s.layer.handle(make_request()))
    assert len(s.inner.seen) <= 200 * 1.2
    assert s.layer.retries == 40


def test_retry_gauge_caps_retries_in_flight_and_is_released() -> None:
    gauge = ResourceGauge("retries", 1)
    s = Setup(response(503), gauge=gauge)
    assert run(s.layer.handle(make_request())).status == 200
    assert gauge.in_use == 0
    full = ResourceGauge("retries", 0)
    s2 = Setup(response(503), gauge=full)
    assert run(s2.layer.handle(make_request())).status == 503
    assert s2.layer.not_retried == {"retry-overflow": 1}
    assert full.overflowed == 1


def test_per_try_deadline_within_the_overall_one() -> None:
    s = Setup(UpstreamTimeout("slow"), policy=RetryPolicy(per_try_timeout=0.5))
    request = make_request()
    request.deadline = s.clock.now + 10.0
    overall = request.deadline
    assert run(s.layer.handle(request)).status == 200
    first, second = s.inner.seen
    assert first.deadline == pytest.approx(1000.5)
    assert second.deadline == pytest.approx(1000.5 + s.sleeps[0])
    assert request.deadline == overall, "restored after the attempts"
    assert s.header(0, b"x-mesh-deadline-ms") == b"500"


def test_no_retry_without_time_for_a_usual_attempt() -> None:
    latency = AttemptLatency()
    latency.observe(1.0)
    s = Setup(response(503), latency=latency)
    request = make_request()
    request.deadline = s.clock.now + 0.5
    assert run(s.layer.handle(request)).status == 503
    assert s.layer.not_retried == {"deadline": 1}


def test_retry_after_is_waited_for() -> None:
    s = Setup(response(503, [(b"retry-after", b"1")]))
    assert run(s.layer.handle(make_request())).status == 200
    assert s.sleeps == [1.0]


def test_caller_that_already_retried_turns_retries_off() -> None:
    caller: Headers = [(b"x-mesh-attempt", b"2"), (b"x-mesh-deadline-ms", b"800")]
    s = Setup(UpstreamConnectFailed("refused"))
    with pytest.raises(UpstreamConnectFailed):
        run(s.layer.handle(make_request(headers=caller)))
    assert len(s.inner.seen) == 1
    assert s.header(0, b"x-mesh-attempt") == b"2", "passed on: no hop below retries either"
    assert s.layer.not_retried == {"caller-retried": 1}


def test_caller_on_its_first_attempt_leaves_app_failures_to_it() -> None:
    caller: Headers = [(b"x-mesh-attempt", b"1"), (b"x-mesh-deadline-ms", b"800")]
    s = Setup(response(503))
    assert run(s.layer.handle(make_request(headers=caller))).status == 503
    assert len(s.inner.seen) == 1
    s2 = Setup(UpstreamConnectFailed("refused"))
    request = make_request(headers=caller)
    assert run(s2.layer.handle(request)).status == 200, "never-sent failures are retried here"
    assert s2.header(0, b"x-mesh-attempt") == b"1"
    assert s2.header(1, b"x-mesh-attempt") == b"2"
    assert s2.inner.seen[0].deadline == pytest.approx(1000.8), "the caller's deadline holds"
    assert int(s2.header(1, b"x-mesh-deadline-ms") or b"0") <= 800
    assert sum(1 for n, _ in s2.inner.seen[1].headers if n == b"x-mesh-attempt") == 1


def test_no_retries_configured_passes_straight_through() -> None:
    s = Setup(UpstreamConnectFailed("refused"), policy=RetryPolicy(max_retries=0))
    with pytest.raises(UpstreamConnectFailed):
        run(s.layer.handle(make_request()))
    assert len(s.inner.seen) == 1
    assert s.budget.statistics()["requests_in_window"] == 1


def test_a_retry_prefers_another_endpoint() -> None:
    clock = ManualClock()
    cluster = cluster_of(2)
    scripted = Scripted([response(503)])
    detector: OutlierDetector[EndpointState] = OutlierDetector(
        BreakerPolicy(), OutlierPolicy(), clock, label=lambda state: state.address
    )
    s = Setup(inner=HealthyBalance(scripted, cluster, FirstChoice(), detector))
    assert run(s.layer.handle(make_request())).status == 200
    first, second = scripted.seen
    assert first.endpoint is cluster.states[0]
    assert second.endpoint is cluster.states[1]


def test_errors_that_are_not_mesh_errors_propagate_untouched() -> None:
    s = Setup(RuntimeError("a bug below"))
    with pytest.raises(RuntimeError):
        run(s.layer.handle(make_request()))
    assert len(s.inner.seen) == 1, "a bug is not an upstream failure: never retried"


def test_statistics_and_repr() -> None:
    s = Setup(response(503))
    run(s.layer.handle(make_request()))
    stats = s.layer.statistics()
    assert stats["requests_total"] == 1 and stats["retries_total"] == 1
    assert stats["budget"]["retries_in_window"] == 1
    assert stats["typical_attempt"]["samples"] == 1
    assert repr(s.layer).startswith("<Retry max_retries=1 requests=1 retries=1 <RetryBudget")
