"""A response body passed through a transformation (compression, a copy into the cache) as
it streams, without a task: the copy loop is driven inline (`mesh.inline`) by the source's
arrivals and the client's flow control, like the rest of the data path.

The output body names the pump as its producer: when the client falls behind, the output
buffer pauses the pump, which stops reading the source, whose own producer (the upstream
connection) then pauses in turn.
"""

from __future__ import annotations

from typing import Any, Protocol

from mesh.errors import MeshError, UpstreamProtocolError
from mesh.http1.body import Body
from mesh.inline import Inline, Waiter


class Transform(Protocol):
    def chunk(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes:
        """The last bytes, once the source ended cleanly."""
        ...


class _Pump:
    def __init__(self, source: Body, transform: Transform) -> None:
        self.source = source
        self.transform = transform
        self.out = Body(self)
        self._paused = False
        self._resume: Waiter[None] | None = None
        self._stopped = False

    async def run(self) -> None:
        out, source, transform = self.out, self.source, self.transform
        while True:
            if self._paused:
                self._resume = Waiter()
                await self._resume
            if self._stopped:
                return
            data = await source.read()
            if not data:
                break
            piece = transform.chunk(data)
            if piece:
                out.feed(piece)
        tail = transform.finish()
        if tail:
            out.feed(tail)
        out.finish()

    def done(self, _: Any, error: BaseException | None) -> None:
        if error is not None and not self._stopped:
            if not isinstance(error, MeshError):
                error = UpstreamProtocolError(f"response body failed: {error!r}")
            self.out.fail(error)

    # -- Producer, for the output body --------------------------------------------------------
    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        waiter, self._resume = self._resume, None
        if waiter is not None:
            waiter.set_result(None)

    def abandoned(self) -> None:
        self._stopped = True
        self.source.abandon()
        self.resume_reading()


def transformed(source: Body, transform: Transform) -> Body:
    """A body that yields `source` passed through `transform`, produced as it is read."""
    if source.at_eof:
        # Already complete (small responses usually are): no pump needed.
        data = transform.chunk(source.take_all()) + transform.finish()
        return Body.complete(data)
    pump = _Pump(source, transform)
    Inline.start(pump.run(), pump.done)
    return pump.out
