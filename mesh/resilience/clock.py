"""The injected clock of the resilience state machines.

A clock is any callable returning seconds that never go backwards: the event loop's `time`
in the sidecar, a hand-advanced fake in tests. The state machines never read the real time
themselves, so their tests need no event loop and no sleeps.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]
#: Uniform random numbers in [0, 1), injectable for the same reason.
Random = Callable[[], float]
