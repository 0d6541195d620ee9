"""The Bulkhead layer (RELIABILITY.md row 36): concurrency never exceeds K, overflow is a
fast `503 bulkhead-full` with `Retry-After`, waiters are served in order or time out.
"""

from __future__ import annotations

import pytest

from mesh.errors import BulkheadFull
from mesh.http1.message import Request, Response
from mesh.inline import Waiter
from mesh.layers.bulkhead import Bulkhead
from mesh.resilience.policy import BulkheadPolicy
from mesh.respond import error_response
from mesh.stack import Handler
from tests.support.fakes import Driven, ManualClock, ManualTimers, make_request, response

pytestmark = pytest.mark.timeout(10)


class Gate(Handler):
    """An upstream that holds every request until the test lets it go."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.held: list[Waiter[Response]] = []

    async def handle(self, request: Request) -> Response:
        self.active += 1
        self.peak = max(self.peak, self.active)
        waiter: Waiter[Response] = Waiter()
        self.held.append(waiter)
        try:
            return await waiter
        finally:
            self.active -= 1

    def finish(self, index: int = 0) -> None:
        self.held.pop(index).set_result(response(200))


class Setup:
    def __init__(self, limit: int, queue: int, timeout: float = 1.0) -> None:
        self.clock = ManualClock()
        self.timers = ManualTimers(self.clock)
        self.gate = Gate()
        self.layer = Bulkhead(
            self.gate,
            BulkheadPolicy(max_concurrent=limit, max_queued=queue, queue_timeout=timeout),
            label="payments",
            clock=self.clock,
            schedule=self.timers,
        )

    def start(self, deadline: float | None = None) -> Driven:
        request = make_request()
        request.deadline = deadline
        return Driven(self.layer.handle(request))


def test_three_k_requests_against_k_slots() -> None:
    k = 4
    s = Setup(limit=k, queue=k)
    runs = [s.start() for _ in range(3 * k)]
    assert s.gate.active == k
    refused = [r for r in runs if r.done]
    assert len(refused) == k, "beyond K running and K queued, refused at once"
    for r in refused:
        with pytest.raises(BulkheadFull) as caught:
            r.value()
        answer = error_response(caught.value)
        assert answer.status == 503
        assert (b"x-mesh-error", b"bulkhead-full") in answer.headers
        assert (b"retry-after", b"1") in answer.headers
    while s.gate.held:
        s.gate.finish()
        assert s.gate.active <= k
    assert s.gate.peak == k
    assert sum(1 for r in runs if r.done and r.error is None) == 2 * k
    stats = s.layer.statistics()
    assert stats["in_use"] == 0 and stats["queued"] == 0
    assert stats["rejected_total"] == k and stats["peak_in_use"] == k


def test_waiters_are_served_in_arrival_order() -> None:
    s = Setup(limit=1, queue=3)
    first = s.start()
    queued = [s.start() for _ in range(3)]
    for expected in range(3):
        s.gate.finish()
        assert [r.done for r in queued] == [i < expected for i in range(3)]
        assert s.gate.active == 1
    assert first.value().status == 200


def test_queue_timeout_answers_bulkhead_full() -> None:
    s = Setup(limit=1, queue=2, timeout=0.5)
    s.start()
    waiting = s.start()
    s.timers.advance(0.49)
    assert not waiting.done
    s.timers.advance(0.01)
    with pytest.raises(BulkheadFull, match=r"no slot freed within 0\.5s"):
        waiting.value()
    assert s.layer.slots.timed_out == 1 and s.layer.slots.queued == 0
    s.gate.finish()
    assert s.layer.slots.in_use == 0


def test_the_request_deadline_shortens_the_wait() -> None:
    s = Setup(limit=1, queue=2, timeout=5.0)
    s.start()
    waiting = s.start(deadline=s.clock.now + 0.2)
    s.timers.advance(0.2)
    with pytest.raises(BulkheadFull):
        waiting.value()
    late = s.start(deadline=s.clock.now - 1)
    with pytest.raises(BulkheadFull, match="no time left"):
        late.value()
    assert s.layer.slots.queued == 0


def test_a_slot_handed_over_cancels_the_waiters_timer() -> None:
    s = Setup(limit=1, queue=1)
    s.start()
    waiting = s.start()
    assert s.timers.pending == 1
    s.gate.finish()
    assert s.timers.pending == 0
    s.timers.advance(5.0)
    assert not waiting.done, "still running upstream, not timed out"
    s.gate.finish()
    assert waiting.value().status == 200


def test_a_failing_request_frees_its_slot() -> None:
    class Broken(Handler):
        async def handle(self, request: Request) -> Response:
            raise RuntimeError("bug below")

    layer = Bulkhead(Broken(), BulkheadPolicy(max_concurrent=1, max_queued=0))
    with pytest.raises(RuntimeError):
        Driven(layer.handle(make_request())).value()
    assert layer.slots.in_use == 0


def test_repr() -> None:
    s = Setup(limit=2, queue=1)
    s.start()
    assert repr(s.layer) == (
        "<Bulkhead <BulkheadSlots payments in_use=1/2 queued=0/1 rejected=0 timed_out=0>>"
    )
