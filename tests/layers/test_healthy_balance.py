"""Endpoint choice that consults the breakers (RELIABILITY.md rows 35 and 36).

Five consecutive 5xx eject an endpoint; while open it gets no requests and callers get a
fast 503 naming the reason; after the backoff exactly one probe goes; success closes it,
failure backs off longer. When every endpoint is out, the answer is an immediate 503
`all-endpoints-ejected` (or `circuit-open` for a single endpoint), never a request to one.
"""

from __future__ import annotations

import pytest

from mesh.cluster import Cluster, EndpointState
from mesh.errors import (
    AllEndpointsEjected,
    BadRequest,
    CircuitOpen,
    NoEndpoints,
    UpstreamConnectFailed,
)
from mesh.http1.message import Response
from mesh.inline import Waiter
from mesh.layers.healthy_balance import HealthyBalance
from mesh.resilience.outlier import OutlierDetector
from mesh.resilience.policy import BreakerPolicy, OutlierPolicy
from mesh.respond import error_response
from tests.layers.clusters import FirstChoice, cluster_of
from tests.support.fakes import Driven, ManualClock, Scripted, make_request, response, run

pytestmark = pytest.mark.timeout(10)


class Setup:
    def __init__(self, n: int, share: float = 0.1) -> None:
        self.clock = ManualClock()
        self.cluster: Cluster = cluster_of(n)
        self.inner = Scripted()
        self.detector: OutlierDetector[EndpointState] = OutlierDetector(
            BreakerPolicy(jitter=0.0),
            OutlierPolicy(max_ejection_share=share),
            self.clock,
            label=lambda state: state.address,
        )
        self.layer = HealthyBalance(self.inner, self.cluster, FirstChoice(), self.detector)

    def send(self, outcome: Response | BaseException | None = None) -> Response:
        if outcome is not None:
            self.inner.script.append(outcome)
        result: Response = run(self.layer.handle(make_request()))
        return result

    def state(self, i: int) -> str:
        breaker = self.detector.breaker(self.cluster.states[i])
        assert breaker is not None
        return breaker.current_state(self.clock.now)


def test_five_consecutive_5xx_eject_and_traffic_moves_away() -> None:
    s = Setup(2)
    for _ in range(5):
        assert s.send(response(503)).status == 503
    assert s.state(0) == "open"
    seen_before = len(s.inner.seen)
    for _ in range(10):
        s.send()
    assert all(seen.endpoint is s.cluster.states[1] for seen in s.inner.seen[seen_before:])
    stats = s.layer.statistics()
    assert stats["ejected"] == 1
    assert stats["endpoints"]["127.0.0.1:21000"]["reason"] == "5 consecutive failures"


def test_connect_failures_count_and_other_errors_do_not() -> None:
    s = Setup(2)
    for _ in range(4):
        with pytest.raises(UpstreamConnectFailed):
            s.send(UpstreamConnectFailed("refused"))
    with pytest.raises(BadRequest):
        s.send(BadRequest("the client's body broke"))
    breaker = s.detector.breaker(s.cluster.states[0])
    assert breaker is not None and breaker.consecutive_failures == 4
    with pytest.raises(UpstreamConnectFailed):
        s.send(UpstreamConnectFailed("refused"))
    assert s.state(0) == "open"


def test_single_endpoint_open_answers_circuit_open_fast_then_one_probe() -> None:
    s = Setup(1)
    for _ in range(5):
        s.send(response(500))
    seen = len(s.inner.seen)
    with pytest.raises(CircuitOpen) as caught:
        s.send()
    assert len(s.inner.seen) == seen, "open: zero upstream hits"
    answer = error_response(caught.value)
    assert answer.status == 503
    assert (b"x-mesh-error", b"circuit-open") in answer.headers
    assert (b"retry-after", b"1") in answer.headers
    assert "5 consecutive failures; next probe in 1.0s" in caught.value.detail

    s.clock.advance(1.0)
    gate: Waiter[Response] = Waiter()
    s.inner.script.append(gate)
    probe = Driven(s.layer.handle(make_request()))
    assert not probe.done and s.state(0) == "half-open"
    with pytest.raises(CircuitOpen):
        s.send()  # exactly one probe: the second request is refused
    gate.set_result(response(200))
    assert probe.value().status == 200
    assert s.state(0) == "closed"
    assert s.send().status == 200


def test_failed_probe_backs_off_longer() -> None:
    s = Setup(1)
    for _ in range(5):
        s.send(response(503))
    s.clock.advance(1.0)
    s.send(response(503))
    assert s.detector.next_probe_in() == pytest.approx(2.0)
    s.clock.advance(1.0)
    with pytest.raises(CircuitOpen):
        s.send()


def test_all_endpoints_ejected_is_a_fast_503_not_panic_routing() -> None:
    s = Setup(3, share=1.0)
    for i in range(3):
        for _ in range(5):
            s.send(response(503))
        assert s.state(i) == "open"
    seen = len(s.inner.seen)
    with pytest.raises(AllEndpointsEjected) as caught:
        s.send()
    assert len(s.inner.seen) == seen
    answer = error_response(caught.value)
    assert answer.status == 503
    assert (b"x-mesh-error", b"all-endpoints-ejected") in answer.headers
    assert (b"retry-after", b"1") in answer.headers
    assert s.detector.refusals == 1


def test_with_the_default_share_one_bad_endpoint_of_three_is_ejected_not_all() -> None:
    s = Setup(3)
    for _ in range(5):
        s.send(response(503))
    # The next endpoint fails too, but the cap (at least one, 10 %) is reached.
    for _ in range(5):
        s.send(response(503))
    assert [s.state(i) for i in range(3)] == ["open", "closed", "closed"]
    breaker = s.detector.breaker(s.cluster.states[1])
    assert breaker is not None and breaker.deferred
    assert s.send().status == 200


def test_a_client_side_error_frees_the_probe() -> None:
    s = Setup(1)
    for _ in range(5):
        s.send(response(503))
    s.clock.advance(1.0)
    with pytest.raises(BadRequest):
        s.send(BadRequest("client body broke"))
    assert s.state(0) == "half-open"
    assert s.send().status == 200, "the probe slot was released, so this one probes"
    assert s.state(0) == "closed"


def test_no_endpoints_is_still_no_endpoints() -> None:
    s = Setup(0)
    with pytest.raises(NoEndpoints):
        s.send()


def test_repr() -> None:
    s = Setup(2)
    assert repr(s.layer) == (
        "<HealthyBalance payments <OutlierDetector 0/0 ejected (max 0), 0 refused>>"
    )
    s.send()
    assert "0/2 ejected (max 1)" in repr(s.layer)
