"""In-process stand-ins for time and for the layers around the one under test.

`ManualClock` and `ManualTimers` replace the event loop's clock and `call_later`, so the
resilience state machines and layers are tested with no loop and no sleeps. `Driven` runs a
coroutine with `mesh.inline.Inline`, the way the data path runs its stack. `Scripted` is an
inner handler answering from a script and recording what it was sent.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from mesh.http1.message import Headers, Request, Response
from mesh.inline import Inline, Waiter
from mesh.stack import Handler


class ManualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


class ManualTimer:
    def __init__(self, due: float, callback: Callable[[], None]) -> None:
        self.due = due
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualTimers:
    """`call_later` on a `ManualClock`: callbacks run when `advance` passes their time."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.timers: list[ManualTimer] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> ManualTimer:
        timer = ManualTimer(self.clock.now + delay, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        due = [t for t in self.timers if not t.cancelled and t.due <= self.clock.now]
        self.timers = [t for t in self.timers if not t.cancelled and t.due > self.clock.now]
        for timer in sorted(due, key=lambda t: t.due):
            timer.callback()

    @property
    def pending(self) -> int:
        return sum(1 for t in self.timers if not t.cancelled)


class Driven:
    """One coroutine driven inline; its outcome is available once it finishes."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        Inline.start(coro, self._finish)

    def _finish(self, result: Any, error: BaseException | None) -> None:
        self.done = True
        self.result = result
        self.error = error

    def value(self) -> Any:
        assert self.done, "the coroutine is still waiting"
        if self.error is not None:
            raise self.error
        return self.result


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that must finish without waiting on anything outside it."""
    return Driven(coro).value()


def make_request(
    method: bytes = b"GET",
    headers: Headers | None = None,
    body: bytes | None = None,
    chunked: bool = False,
) -> Request:
    from mesh.http1.body import Body

    request = Request(
        method,
        b"/",
        list(headers or []),
        authority=b"svc",
        body=None if body is None else Body.complete(body),
        content_length=None if body is None or chunked else len(body),
    )
    return request


def response(status: int, headers: Headers | None = None) -> Response:
    return Response(status, list(headers or []))


@dataclass
class Seen:
    attempt: int
    endpoint: Any
    deadline: float | None
    headers: Headers
    body: bytes | None


Outcome = Response | BaseException | Waiter[Response] | Callable[[Request], Response]


@dataclass
class Scripted(Handler):
    """An inner handler: answers with the next scripted outcome (200 once the script ends)."""

    script: list[Outcome] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        body = request.body
        data = None if body is None else body.take_all()
        self.seen.append(
            Seen(request.attempts, request.endpoint, request.deadline, list(request.headers), data)
        )
        outcome: Outcome = self.script.pop(0) if self.script else response(200)
        if isinstance(outcome, Waiter):
            return await outcome
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, Response):
            return outcome
        return outcome(request)
