"""Expires exchanges whose deadline has passed, with one periodic check per process.

A timer per request costs about 2.7 us on uvloop (create plus cancel), a tenth of a whole
proxy hop; a set insert and removal costs 0.1 us. The price is resolution: a deadline fires
up to `RESOLUTION` late, which is small against timeouts measured in hundreds of ms.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

RESOLUTION: Final = 0.02


class Expirable(Protocol):
    deadline: float

    def expire(self) -> None: ...


class DeadlineSweeper:
    def __init__(self) -> None:
        self.waiting: set[Expirable] = set()
        self.expired = 0

    def sweep(self, now: float) -> None:
        late = [item for item in self.waiting if item.deadline <= now]
        for item in late:
            self.waiting.discard(item)
            self.expired += 1
            item.expire()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RESOLUTION)
            if self.waiting:
                self.sweep(loop.time())


#: The process's sweeper; `run()` is started by whoever owns the event loop (the sidecar).
SWEEPER: Final = DeadlineSweeper()
