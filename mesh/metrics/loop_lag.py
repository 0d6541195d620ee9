"""Event-loop lag: how late a timer fires. A busy or blocked loop delays every request."""

from __future__ import annotations

import asyncio

from mesh.metrics.histogram import Histogram

#: Lag worth seeing starts near a millisecond; a second means something blocked the loop.
LAG_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class LoopLag:
    """Sleeps `interval` in a loop and records how much later than asked it woke up."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.histogram = Histogram(LAG_BUCKETS)
        self.last = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - asked - self.interval)
            self.last = lag
            self.histogram.observe(lag)
