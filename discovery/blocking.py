"""A Consul blocking query asked again and again, under Consul's rules for doing so.

Consul's blocking-query documentation asks every client to:
- treat a return as "maybe changed", never as a change (the consumer compares the data);
- start over from index 0 when the index goes backwards (the servers' state was rebuilt);
- never send an index below 1 (an index of 0 answers at once, every time);
- rate-limit the loop, so a server that answers instantly cannot make it spin;
- back off with jitter while the agent is unreachable or answers garbage.

`BlockingIndex` and `TokenBucket` are the pure parts (the bucket takes an injected clock);
`blocking_answers` is the loop, with a tenacity wait strategy as its backoff policy.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
from tenacity import AsyncRetrying, RetryCallState, wait_random_exponential
from tenacity.wait import wait_base

from discovery.consul_client import ConsulFailure

T = TypeVar("T")


class BlockingIndex:
    """The index to send next, following Consul's rules."""

    def __init__(self) -> None:
        self.value = 0

    def to_send(self) -> int | None:
        """The index for the next query; None asks for the current state at once."""
        return self.value if self.value >= 1 else None

    def went_backwards(self, returned: int) -> bool:
        return returned < self.value

    def advance(self, returned: int) -> None:
        """Take the index of a handled answer."""
        if self.went_backwards(returned):
            self.value = 0
        else:
            # An index of 0 is a server bug; 1 still blocks, 0 would answer instantly forever.
            self.value = max(returned, 1)


class TokenBucket:
    """At most `burst` queries at once, `rate` per second after that."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def take(self) -> float:
        """Take a token; the seconds to wait before using it (0 when one was there)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1
        # A negative balance is a reservation: the next caller waits behind this one.
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class Backoff:
    """Failures in a row, and how long to wait after each: a tenacity wait strategy decides."""

    def __init__(self, strategy: wait_base) -> None:
        self._strategy = strategy
        self._state = RetryCallState(AsyncRetrying(wait=strategy), None, (), {})
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the seconds to wait before the next attempt."""
        self.failures += 1
        self._state.attempt_number = self.failures
        return float(self._strategy(self._state))

    def succeeded(self) -> None:
        self.failures = 0


def default_backoff(max_wait: float = 5.0) -> wait_base:
    """Full jitter: a random wait in a window that doubles from 0.5 s up to *max_wait*."""
    return wait_random_exponential(multiplier=0.5, max=max_wait)


@dataclass(frozen=True)
class LoopPolicy:
    #: How long Consul may hold a query open when nothing changes (it adds up to 1/16).
    wait: float = 30.0
    #: Sustained queries per second, per loop.
    rate: float = 1.0
    burst: int = 2
    #: Seconds to wait after the n-th failure in a row (a tenacity wait strategy).
    backoff: wait_base = field(default_factory=default_backoff)


#: One blocking query: (index to send or None) -> (index returned, raw data).
Query = Callable[[int | None], Awaitable[tuple[int, Any]]]
#: Turns raw data into the consumer's value; `restart` says the state may be new (first
#: answer, index went backwards, or the agent was unreachable), so cached facts are stale.
Build = Callable[[Any, bool], Awaitable[T]]


@dataclass(frozen=True)
class Answer(Generic[T]):
    index: int
    value: T


async def blocking_answers(
    query: Query, build: Build[T], policy: LoopPolicy
) -> AsyncIterator[Answer[T] | ConsulFailure]:
    """Yield every answer (changed or not) and every failure, forever.

    A failed query or an unusable answer (build raised ConsulFailure) leaves the index where
    it was and is yielded before the backoff; the consumer keeps its last good value. The
    first query, and the first after a failure, do not block.
    """
    index = BlockingIndex()
    bucket = TokenBucket(policy.rate, policy.burst)
    backoff = Backoff(policy.backoff)
    restart = True
    while True:
        await anyio.sleep(bucket.take())
        failure: ConsulFailure | None = None
        try:
            # After a failure, ask for the current state at once: the agent may be back
            # with nothing changed, and a blocking query would only report so after `wait`.
            returned, raw = await query(None if restart else index.to_send())
            value = await build(raw, restart or index.went_backwards(returned))
        except ConsulFailure as exc:
            failure = exc
        if failure is not None:
            restart = True
            yield failure
            await anyio.sleep(backoff.failed())
            continue
        backoff.succeeded()
        restart = False
        index.advance(returned)
        yield Answer(returned, value)
