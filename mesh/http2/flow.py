"""Flow control shared by both ends: received DATA is acknowledged (WINDOW_UPDATE) only as
the body's reader takes it, and sending waits for the peer's window.

A `Body` pauses its producer past its high-water mark; for an HTTP/2 stream that means
"stop acknowledging", so the peer runs out of window and stops sending: one stream's
buffer is bounded by the high-water mark plus one window, and other streams go on.
"""

from __future__ import annotations

from collections.abc import Callable

from mesh.http1.body import Body
from mesh.inline import Waiter

#: Per-stream receive window we advertise (SETTINGS_INITIAL_WINDOW_SIZE), and the
#: connection's (raised by WINDOW_UPDATE at the start): 1 MiB / 16 MiB, as Envoy's edge.
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024


class StreamFlow:
    """One stream's receive side (the `Body` producer) and its send-window waiter."""

    __slots__ = (
        "_ack",
        "body",
        "discard",
        "head_sent",
        "paused",
        "progress",
        "reset",
        "stream_id",
        "unacked",
        "window_waiter",
    )

    def __init__(self, stream_id: int, ack: Callable[[int, int], None]) -> None:
        self.stream_id = stream_id
        self._ack = ack
        self.body: Body | None = None
        self.paused = False
        #: The reader gave up: DATA is acknowledged and dropped.
        self.discard = False
        self.unacked = 0
        self.window_waiter: Waiter[None] | None = None
        #: The peer reset the stream (or the connection went): nothing more is sent on it.
        self.reset = False
        #: Response HEADERS went out (a reset before that is "premature", see guard.py).
        self.head_sent = False
        #: Loop time DATA last arrived (the body timeout).
        self.progress = 0.0

    def received(self, data: bytes, flow_controlled: int) -> None:
        body = self.body
        if body is None or self.discard:
            self._ack(self.stream_id, flow_controlled)
            return
        body.feed(data)  # may call pause_reading
        if self.paused:
            self.unacked += flow_controlled
        else:
            self._ack(self.stream_id, flow_controlled)

    # -- Body producer ----------------------------------------------------------------------
    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        owed, self.unacked = self.unacked, 0
        if owed:
            self._ack(self.stream_id, owed)

    def abandoned(self) -> None:
        self.discard = True
        self.resume_reading()

    # -- send side --------------------------------------------------------------------------
    async def window(self) -> None:
        """Wait for a WINDOW_UPDATE (or the stream's end, which also wakes this)."""
        self.window_waiter = Waiter()
        await self.window_waiter

    def wake(self) -> None:
        waiter, self.window_waiter = self.window_waiter, None
        if waiter is not None:
            waiter.set_result(None)
