"""Caps the exchanges in progress below this point, with a short bounded queue before it.

A free slot costs two counter updates. Without one, the request waits in a FIFO (a
`Waiter`, woken by the request that frees a slot) for at most the policy's queue timeout or
its own deadline, whichever is first; a full queue or a wait that runs out answers at once
with `503`, `x-mesh-error: bulkhead-full` and `Retry-After`.

A slot is held until the upstream has sent its whole answer (or the attempt failed), as
Envoy counts a request until its stream ends: an app streaming its answers is working on
them, and the limit is on the work in progress behind the sidecar.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from mesh.errors import BulkheadFull
from mesh.http1.message import Request, Response
from mesh.inline import Waiter
from mesh.resilience.bulkhead import BulkheadSlots
from mesh.resilience.clock import Clock
from mesh.resilience.policy import BulkheadPolicy
from mesh.stack import Handler


class Timer(Protocol):
    def cancel(self) -> None: ...


#: Calls back after a delay, like `loop.call_later`; injectable so tests need no loop.
Schedule = Callable[[float, Callable[[], None]], Timer]


class Bulkhead(Handler):
    def __init__(
        self,
        inner: Handler,
        policy: BulkheadPolicy,
        *,
        label: str = "",
        clock: Clock | None = None,
        schedule: Schedule | None = None,
    ) -> None:
        self.inner = inner
        self.policy = policy
        self.slots: BulkheadSlots[Waiter[None]] = BulkheadSlots(policy, label)
        self._clock = clock
        self._schedule = schedule

    async def handle(self, request: Request) -> Response:
        if not self.slots.try_acquire():
            await self._wait_for_slot(request)
        try:
            response = await self.inner.handle(request)
        except BaseException:
            self._release()
            raise
        body = response.body
        if body is None or body.at_eof:
            self._release()
        else:
            # The upstream is still working on this answer: the slot is free once it ends.
            body.on_end = self._release
        return response

    def _release(self) -> None:
        waiter = self.slots.release()
        if waiter is not None:
            waiter.set_result(None)  # the slot is theirs now

    async def _wait_for_slot(self, request: Request) -> None:
        policy = self.policy
        slots = self.slots
        waiter: Waiter[None] = Waiter()
        if not slots.enqueue(waiter):
            raise BulkheadFull(
                f"{slots.in_use} requests in progress and {slots.queued} waiting",
                policy.retry_after,
            )
        wait = policy.queue_timeout
        if request.deadline is not None:
            clock = self._clock or asyncio.get_running_loop().time
            wait = min(wait, request.deadline - clock())
        if wait <= 0:
            slots.cancel(waiter)
            raise BulkheadFull("no time left to wait for a slot", policy.retry_after)
        schedule = self._schedule or asyncio.get_running_loop().call_later
        timer = schedule(wait, lambda: self._give_up(waiter, wait))
        try:
            await waiter
        finally:
            timer.cancel()

    def _give_up(self, waiter: Waiter[None], waited: float) -> None:
        if self.slots.cancel(waiter):
            waiter.set_exception(
                BulkheadFull(f"no slot freed within {waited:.3g}s", self.policy.retry_after)
            )

    def statistics(self) -> dict[str, Any]:
        return self.slots.statistics()

    def __repr__(self) -> str:
        return f"<Bulkhead {self.slots!r}>"
