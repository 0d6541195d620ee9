"""Per-upstream resource gauges and the attempt-time estimate."""

from __future__ import annotations

import pytest

from mesh.resilience.latency import AttemptLatency
from mesh.resilience.limits import ResourceGauge, UpstreamResources
from mesh.resilience.policy import ResourceLimits, RetryPolicy
from mesh.resilience.retry import RetryDecider

pytestmark = pytest.mark.timeout(10)


def test_gauge_refuses_at_its_limit_and_counts_it() -> None:
    gauge = ResourceGauge("retries", 2)
    assert gauge.try_acquire() and gauge.try_acquire()
    assert not gauge.try_acquire()
    assert gauge.statistics() == {"limit": 2, "in_use": 2, "overflowed_total": 1}
    gauge.release()
    assert gauge.try_acquire()
    assert repr(gauge) == "<ResourceGauge retries 2/2 overflowed=1>"
    gauge.release()
    gauge.release()
    with pytest.raises(RuntimeError):
        gauge.release()


def test_upstream_resources_default_to_envoys_thresholds_with_retries_left_to_the_budget() -> None:
    resources = UpstreamResources(ResourceLimits())
    assert resources.statistics()["retries"] == {"limit": 1024, "in_use": 0, "overflowed_total": 0}
    assert repr(resources) == (
        "<UpstreamResources connections=0/1024, pending=0/1024, requests=0/1024, retries=0/1024>"
    )


def test_attempt_latency_is_a_moving_mean_of_successes() -> None:
    latency = AttemptLatency(weight=0.5)
    assert latency.seconds == 0.0, "no sample: never blocks a retry"
    latency.observe(0.1)
    latency.observe(0.3)
    assert latency.seconds == pytest.approx(0.2)
    latency.observe(-1.0)
    assert latency.samples == 2
    assert repr(latency) == "<AttemptLatency 200.0ms over 2 samples>"
    with pytest.raises(ValueError):
        AttemptLatency(weight=0)


def test_decider_repr() -> None:
    assert repr(RetryDecider(RetryPolicy())) == (
        "<RetryDecider max_retries=1 statuses=[502, 503, 504] backoff=0.025s..0.25s per_try=None>"
    )
