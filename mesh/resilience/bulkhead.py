"""The bulkhead's bookkeeping: slots in use, a bounded FIFO of waiters, and what was refused.

Pure: a waiter is any object the caller hands in (the Bulkhead layer uses `Waiter`s) and
gets back from `release` when the slot passes to it, so the caller does the waking. A slot
freed while someone waits goes straight to the oldest waiter; `in_use` never exceeds the
limit and a newcomer never overtakes the queue.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Generic, TypeVar

from mesh.resilience.policy import BulkheadPolicy

T = TypeVar("T")


class BulkheadSlots(Generic[T]):
    def __init__(self, policy: BulkheadPolicy, label: str = "") -> None:
        self.policy = policy
        #: Read per request: a native copy of the (interpreted) policy's field.
        self.max_concurrent = policy.max_concurrent
        self.label = label
        self.in_use = 0
        self._queue: deque[T] = deque()
        self.admitted = 0
        self.queued_total = 0
        self.rejected = 0
        self.timed_out = 0
        self.peak_in_use = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def try_acquire(self) -> bool:
        """Take a slot at once if one is free and nobody is waiting for it."""
        if self.in_use < self.max_concurrent and not self._queue:
            self.in_use += 1
            self.admitted += 1
            if self.in_use > self.peak_in_use:
                self.peak_in_use = self.in_use
            return True
        return False

    def enqueue(self, waiter: T) -> bool:
        """Wait in line for a slot; False (counted as rejected) when the line is full."""
        if len(self._queue) >= self.policy.max_queued:
            self.rejected += 1
            return False
        self._queue.append(waiter)
        self.queued_total += 1
        return True

    def release(self) -> T | None:
        """Give a slot back; returns the waiter it passed to (wake it), or None."""
        if self._queue:
            self.admitted += 1
            return self._queue.popleft()
        if self.in_use <= 0:
            raise RuntimeError("bulkhead slot released more often than acquired")
        self.in_use -= 1
        return None

    def cancel(self, waiter: T) -> bool:
        """A waiter gave up (timed out); False when it is not waiting (it got its slot)."""
        try:
            self._queue.remove(waiter)
        except ValueError:
            return False
        self.timed_out += 1
        return True

    def statistics(self) -> dict[str, Any]:
        return {
            "max_concurrent": self.policy.max_concurrent,
            "max_queued": self.policy.max_queued,
            "in_use": self.in_use,
            "queued": len(self._queue),
            "peak_in_use": self.peak_in_use,
            "admitted_total": self.admitted,
            "queued_total": self.queued_total,
            "rejected_total": self.rejected,
            "timed_out_total": self.timed_out,
        }

    def __repr__(self) -> str:
        name = f" {self.label}" if self.label else ""
        return (
            f"<BulkheadSlots{name} in_use={self.in_use}/{self.policy.max_concurrent} "
            f"queued={len(self._queue)}/{self.policy.max_queued} rejected={self.rejected} "
            f"timed_out={self.timed_out}>"
        )
