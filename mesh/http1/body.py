"""A streamed message body with flow control: one transport feeds it, one consumer reads it.

The producer side is called from protocol callbacks (`feed`, `finish`, `fail`); when more than
`high_water` bytes are waiting, the producer's transport is paused, and it resumes once the
consumer has taken the buffer. This is how a 1 GiB body crosses the proxy in bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from mesh.inline import Waiter

HIGH_WATER = 256 * 1024


class Producer(Protocol):
    """The connection a body arrives on (passed whole: no bound methods per body)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def abandoned(self) -> None:
        """The reader gave up on the body: stop producing it (drop the connection)."""


class Body:
    __slots__ = (
        "_chunks",
        "_done",
        "_error",
        "_paused",
        "_producer",
        "_size",
        "_waiter",
        "high_water",
        "on_end",
        "received",
        "trailers",
    )

    def __init__(self, producer: Producer | None = None, high_water: int = HIGH_WATER) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: Waiter[None] | None = None
        self._producer = producer
        self._paused = False
        self.high_water = high_water
        #: Total bytes fed so far (for access logs and limits).
        self.received = 0
        #: Called once when the body has ended: complete, failed or abandoned (a bulkhead
        #: holds its slot until the upstream has sent the whole answer).
        self.on_end: Callable[[], None] | None = None
        #: Trailer fields (lower-case names) that followed the body, set by the producer
        #: before the end is signalled (HTTP/2 carries them; gRPC's status lives there).
        self.trailers: list[tuple[bytes, bytes]] | None = None

    @classmethod
    def complete(cls, data: bytes) -> Body:
        body = cls()
        if data:
            body._chunks.append(data)
            body._size = body.received = len(data)
        body._done = True
        return body

    # -- producer side (protocol callbacks) --------------------------------------------------
    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self.received += len(data)
        if self._waiter is not None:
            self._wake()
        if self._size > self.high_water and not self._paused and self._producer is not None:
            self._paused = True
            self._producer.pause_reading()

    def finish(self) -> None:
        self._done = True
        if self._waiter is not None:
            self._wake()
        if self.on_end is not None:
            self._ended()

    def fail(self, exc: BaseException) -> None:
        if self._done:
            return
        self._error = exc
        self._done = True
        if self._waiter is not None:
            self._wake()
        if self.on_end is not None:
            self._ended()

    def _ended(self) -> None:
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.set_result(None)

    # -- consumer side -----------------------------------------------------------------------
    @property
    def at_eof(self) -> bool:
        """Everything has arrived (it may still be waiting in the buffer)."""
        return self._done and self._error is None

    @property
    def failed(self) -> bool:
        return self._error is not None

    def take_all(self) -> bytes:
        """Return and clear what is buffered, without waiting."""
        if not self._chunks:
            return b""
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        if self._paused:
            self._paused = False
            if self._producer is not None:
                self._producer.resume_reading()
        return data

    async def read(self) -> bytes:
        """Next piece of the body; b"" at the end. Raises what the producer failed with."""
        while True:
            if self._chunks:
                return self.take_all()
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            self._waiter = Waiter()
            await self._waiter

    def abandon(self) -> None:
        """The consumer will read no more: the producer stops (its connection is dropped)."""
        self._chunks.clear()
        self._size = 0
        if not self._done:
            self._done = True
            self._error = ConnectionAbortedError("body abandoned by its reader")
            if self._producer is not None:
                self._producer.abandoned()
            if self.on_end is not None:
                self._ended()

    async def read_all(self, limit: int) -> bytes:
        """The whole body, or `OverflowError` once it passes `limit` bytes."""
        parts: list[bytes] = []
        size = 0
        while chunk := await self.read():
            size += len(chunk)
            if size > limit:
                raise OverflowError(size)
            parts.append(chunk)
        return b"".join(parts)
