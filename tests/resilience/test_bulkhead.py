"""The bulkhead's bookkeeping: slots never exceed the limit, the queue stays bounded and
fair, and every refusal is counted.

The state machine test acquires (or queues), releases, and cancels waiters in any order,
modelling the layer: a released slot goes to the oldest waiter, who then holds it.
"""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mesh.resilience.bulkhead import BulkheadSlots
from mesh.resilience.policy import BulkheadPolicy, ResourceLimits

pytestmark = pytest.mark.timeout(60)


def test_fills_then_queues_then_rejects() -> None:
    slots: BulkheadSlots[str] = BulkheadSlots(BulkheadPolicy(max_concurrent=2, max_queued=1))
    assert slots.try_acquire() and slots.try_acquire()
    assert not slots.try_acquire()
    assert slots.enqueue("a")
    assert not slots.enqueue("b")
    assert slots.rejected == 1
    assert slots.release() == "a", "the freed slot goes to the waiter"
    assert slots.in_use == 2 and slots.queued == 0
    assert slots.release() is None and slots.release() is None
    assert slots.in_use == 0
    with pytest.raises(RuntimeError):
        slots.release()


def test_newcomer_never_overtakes_the_queue() -> None:
    slots: BulkheadSlots[str] = BulkheadSlots(BulkheadPolicy(max_concurrent=1, max_queued=4))
    assert slots.try_acquire()
    assert slots.enqueue("a")
    assert slots.release() == "a"
    assert not slots.try_acquire(), "the slot passed to 'a', it is not free"


def test_cancel_removes_a_waiter_once() -> None:
    slots: BulkheadSlots[str] = BulkheadSlots(BulkheadPolicy(max_concurrent=1, max_queued=4))
    slots.try_acquire()
    slots.enqueue("a")
    assert slots.cancel("a")
    assert not slots.cancel("a")
    assert slots.timed_out == 1
    assert slots.release() is None


def test_statistics_and_repr() -> None:
    slots: BulkheadSlots[str] = BulkheadSlots(
        BulkheadPolicy(max_concurrent=1, max_queued=1), label="payments"
    )
    slots.try_acquire()
    slots.enqueue("a")
    slots.enqueue("b")
    assert slots.statistics() == {
        "max_concurrent": 1,
        "max_queued": 1,
        "in_use": 1,
        "queued": 1,
        "peak_in_use": 1,
        "admitted_total": 1,
        "queued_total": 1,
        "rejected_total": 1,
        "timed_out_total": 0,
    }
    assert repr(slots) == ("<BulkheadSlots payments in_use=1/1 queued=1/1 rejected=1 timed_out=0>")


def test_resource_limits_map_onto_a_bulkhead() -> None:
    limits = ResourceLimits()
    assert (limits.max_connections, limits.max_pending, limits.max_requests) == (1024,) * 3
    assert limits.max_retries == 1024
    assert limits.bulkhead() == BulkheadPolicy(max_concurrent=1024, max_queued=1024)


class BulkheadMachine(RuleBasedStateMachine):
    @initialize(limit=st.integers(1, 4), queue=st.integers(0, 4))
    def configure(self, limit: int, queue: int) -> None:
        self.policy = BulkheadPolicy(max_concurrent=limit, max_queued=queue)
        self.slots: BulkheadSlots[int] = BulkheadSlots(self.policy)
        self.holders: set[int] = set()
        self.waiting: deque[int] = deque()
        self.rejected = 0
        self.next_id = 0

    @rule()
    def arrive(self) -> None:
        self.next_id += 1
        me = self.next_id
        if self.slots.try_acquire():
            assert not self.waiting, "took a slot past waiting requests"
            self.holders.add(me)
        elif self.slots.enqueue(me):
            self.waiting.append(me)
        else:
            assert len(self.waiting) == self.policy.max_queued
            self.rejected += 1
            event("rejected")

    @rule(pick=st.integers(0, 100))
    def leave(self, pick: int) -> None:
        if not self.holders:
            return
        me = sorted(self.holders)[pick % len(self.holders)]
        self.holders.remove(me)
        handed = self.slots.release()
        if self.waiting:
            assert handed == self.waiting.popleft(), "not the oldest waiter"
            self.holders.add(handed)
            event("handed over")
        else:
            assert handed is None

    @rule(pick=st.integers(0, 100))
    def time_out(self, pick: int) -> None:
        if not self.waiting:
            return
        me = self.waiting[pick % len(self.waiting)]
        assert self.slots.cancel(me)
        self.waiting.remove(me)

    @invariant()
    def bounded_and_counted(self) -> None:
        slots = self.slots
        assert slots.in_use == len(self.holders) <= self.policy.max_concurrent
        assert slots.queued == len(self.waiting) <= self.policy.max_queued
        assert slots.rejected == self.rejected
        if self.waiting:
            assert slots.in_use == self.policy.max_concurrent, "someone waits beside a free slot"


TestBulkheadMachine = BulkheadMachine.TestCase
TestBulkheadMachine.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
