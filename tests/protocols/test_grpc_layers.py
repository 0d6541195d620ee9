"""The resilience and observation layers reading `grpc-status` (scripted inner handlers, an
injected clock, no sockets): a gRPC failure is an HTTP 200, and only its status says so."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from mesh.cluster import EndpointState
from mesh.errors import BadRequest, NoEndpoints
from mesh.grpc.timeout import parse
from mesh.http1.body import Body
from mesh.http1.message import Headers, Request, Response
from mesh.layers.deadline import Deadline
from mesh.layers.healthy_balance import HealthyBalance
from mesh.layers.retry import Retry
from mesh.metrics.requests import ObserveRequests, RequestStats
from mesh.resilience.budget import RetryBudget
from mesh.resilience.outlier import OutlierDetector
from mesh.resilience.policy import BreakerPolicy, BudgetPolicy, OutlierPolicy, RetryPolicy
from tests.layers.clusters import FirstChoice, cluster_of
from tests.support.fakes import ManualClock, Scripted, make_request, run

pytestmark = pytest.mark.timeout(10)

GRPC_HEAD: Headers = [(b"content-type", b"application/grpc")]


def grpc_request(*extra: tuple[bytes, bytes], version: bytes = b"2") -> Request:
    request = make_request(b"POST", [*GRPC_HEAD, *extra], body=b"\x00\x00\x00\x00\x02hi")
    request.version = version
    return request


def trailers_only(code: int, *extra: tuple[bytes, bytes]) -> Response:
    return Response(200, [*GRPC_HEAD, (b"grpc-status", b"%d" % code), *extra], None, 0)


def streamed() -> Response:
    return Response(200, list(GRPC_HEAD), Body())


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


def retry_layer(inner: Scripted) -> Retry:
    clock = ManualClock()

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    return Retry(inner, RetryPolicy(), RetryBudget(BudgetPolicy(), clock), clock=clock, sleep=sleep)


def test_unavailable_is_retried_though_grpc_calls_are_posts() -> None:
    inner = Scripted([trailers_only(14), trailers_only(0)])
    answer = run(retry_layer(inner).handle(grpc_request()))
    assert dict(answer.headers)[b"grpc-status"] == b"0"
    assert len(inner.seen) == 2
    assert inner.seen[0].body == inner.seen[1].body == b"\x00\x00\x00\x00\x02hi"


def test_other_grpc_failures_are_answered_as_they_came() -> None:
    inner = Scripted([trailers_only(13)])
    layer = retry_layer(inner)
    answer = run(layer.handle(grpc_request()))
    assert dict(answer.headers)[b"grpc-status"] == b"13"
    assert len(inner.seen) == 1
    assert layer.not_retried == {"not-retryable": 1}


def test_a_peer_proxys_grpc_shaped_refusal_is_retried_like_its_503() -> None:
    refusal = trailers_only(8, (b"x-mesh-error", b"bulkhead-full"))
    inner = Scripted([refusal, trailers_only(0)])
    run(retry_layer(inner).handle(grpc_request((b"x-mesh-attempt", b"1"))))
    assert len(inner.seen) == 2


def test_unavailable_is_left_to_a_caller_that_retries_itself() -> None:
    inner = Scripted([trailers_only(14)])
    run(retry_layer(inner).handle(grpc_request((b"x-mesh-attempt", b"1"))))
    assert len(inner.seen) == 1


def test_http1_answers_are_not_read_for_grpc_status() -> None:
    inner = Scripted([trailers_only(14)])
    run(retry_layer(inner).handle(grpc_request(version=b"1.1")))
    assert len(inner.seen) == 1


class Breakers:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.cluster = cluster_of(2)
        self.inner = Scripted()
        self.detector: OutlierDetector[EndpointState] = OutlierDetector(
            BreakerPolicy(jitter=0.0), OutlierPolicy(), self.clock, label=lambda s: s.address
        )
        self.layer = HealthyBalance(self.inner, self.cluster, FirstChoice(), self.detector)

    def send(self, answer: Response) -> Response:
        self.inner.script.append(answer)
        result: Response = run(self.layer.handle(grpc_request()))
        return result

    def first_state(self) -> str:
        breaker = self.detector.breaker(self.cluster.states[0])
        return "closed" if breaker is None else breaker.current_state(self.clock.now)


def test_failing_grpc_statuses_eject_an_endpoint() -> None:
    b = Breakers()
    for code in (14, 13, 2, 4, 14):
        b.send(trailers_only(code))
    assert b.first_state() == "open"


def test_answers_that_are_not_server_failures_do_not() -> None:
    b = Breakers()
    for code in (5, 3, 7, 16, 0, 9):
        b.send(trailers_only(code))
    assert b.first_state() == "closed"


def test_a_streamed_call_is_judged_when_its_body_ends() -> None:
    b = Breakers()
    answers = [b.send(streamed()) for _ in range(5)]
    assert b.first_state() == "closed", "no status yet: nothing counted"
    for answer in answers:
        assert answer.body is not None
        answer.body.finish()  # ended without a grpc-status: UNKNOWN
    assert b.first_state() == "open"


def test_a_call_its_client_cancelled_says_nothing_about_the_endpoint() -> None:
    b = Breakers()
    answers = [b.send(streamed()) for _ in range(5)]
    for answer in answers:
        assert answer.body is not None
        answer.body.abandon()
    assert b.first_state() == "closed"


def test_grpc_timeout_shortens_the_deadline_and_is_forwarded_smaller(
    loop: asyncio.AbstractEventLoop,
) -> None:
    inner = Scripted()
    now = loop.time()
    run(Deadline(inner, 15.0).handle(grpc_request((b"grpc-timeout", b"250m"))))
    seen = inner.seen[0]
    assert seen.deadline is not None and seen.deadline - now == pytest.approx(0.25, abs=0.05)
    forwarded = dict(seen.headers)[b"grpc-timeout"]
    assert 0.2 < parse(forwarded) <= 0.25


def test_the_mesh_timeout_caps_a_longer_grpc_timeout(loop: asyncio.AbstractEventLoop) -> None:
    inner = Scripted()
    run(Deadline(inner, 2.0).handle(grpc_request((b"grpc-timeout", b"1H"))))
    assert 1.9 < parse(dict(inner.seen[0].headers)[b"grpc-timeout"]) <= 2.0


def test_a_malformed_grpc_timeout_is_refused(loop: asyncio.AbstractEventLoop) -> None:
    inner = Scripted()
    with pytest.raises(BadRequest):
        run(Deadline(inner, 2.0).handle(grpc_request((b"grpc-timeout", b"soon"))))
    assert inner.seen == []


def test_metrics_count_calls_by_grpc_status(loop: asyncio.AbstractEventLoop) -> None:
    stats = RequestStats("outbound", "greeter")
    inner = Scripted([trailers_only(0), trailers_only(14), streamed(), NoEndpoints()])
    layer = ObserveRequests(inner, stats)
    run(layer.handle(grpc_request()))
    run(layer.handle(grpc_request()))
    answer = run(layer.handle(grpc_request()))
    with pytest.raises(NoEndpoints):
        run(layer.handle(grpc_request()))
    assert stats.grpc == {"OK": 1, "UNAVAILABLE": 2}
    assert answer.body is not None
    answer.body.finish()
    assert stats.grpc == {"OK": 1, "UNAVAILABLE": 2, "UNKNOWN": 1}
    run(layer.handle(make_request()))
    assert sum(stats.grpc.values()) == 4, "HTTP/1.1 requests are not counted"


def test_an_http2_body_ending_in_the_same_read_is_replayed() -> None:
    """The stack starts on the HEADERS frame; the DATA of a unary call is processed after."""
    request = grpc_request()
    body = request.body = Body()
    request.content_length = None
    inner = Scripted([trailers_only(14), trailers_only(0)])
    clock = ManualClock()

    async def rest_of_the_read(seconds: float) -> None:
        if not body.at_eof:
            body.feed(b"\x00\x00\x00\x00\x01x")
            body.finish()

    layer = Retry(
        inner,
        RetryPolicy(),
        RetryBudget(BudgetPolicy(), clock),
        clock=clock,
        sleep=rest_of_the_read,
    )
    run(layer.handle(request))
    assert [seen.body for seen in inner.seen] == [b"\x00\x00\x00\x00\x01x"] * 2


def test_each_attempt_forwards_the_time_left_of_its_own_deadline() -> None:
    clock = ManualClock()

    def slow_refusal(request: Request) -> Response:
        clock.advance(0.3)
        return trailers_only(14)

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    inner = Scripted([slow_refusal, trailers_only(0)])
    request = grpc_request((b"grpc-timeout", b"2S"))
    request.deadline = clock.now + 2.0
    layer = Retry(
        inner, RetryPolicy(), RetryBudget(BudgetPolicy(), clock), clock=clock, sleep=sleep
    )
    run(layer.handle(request))
    first, second = (parse(dict(seen.headers)[b"grpc-timeout"]) for seen in inner.seen)
    assert first == pytest.approx(2.0)
    assert 1.6 < second <= 1.7
    per_try = Retry(
        Scripted([trailers_only(0)]),
        RetryPolicy(per_try_timeout=0.5),
        RetryBudget(BudgetPolicy(), clock),
        clock=clock,
        sleep=sleep,
    )
    request = grpc_request((b"grpc-timeout", b"2S"))
    request.deadline = clock.now + 2.0
    run(per_try.handle(request))
    assert parse(dict(request.headers)[b"grpc-timeout"]) == pytest.approx(0.5)
