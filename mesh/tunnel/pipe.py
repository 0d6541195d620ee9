"""A byte tunnel between two transports: what a WebSocket after its 101, and a TCP upstream,
become inside the sidecar.

Each transport gets a `Side` as its protocol; a side writes what it receives to the other
side's transport. Flow control is end to end: when one transport's write buffer fills, the
other one stops reading until it drains, so a tunnel holds a bounded amount in memory.

A tunnel ends when both transports are gone. An EOF on one side is passed on as a half-close
when the other transport can write one (plain TCP); over TLS it cannot, so the other side is
closed once its buffered bytes are written. A tunnel with no byte in either direction for
`idle_timeout` seconds is closed; the check is one timer per tunnel, not one per chunk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

log = logging.getLogger("mesh.tunnel")

#: Default idle timeout (seconds) of a tunnel; the sidecar sets it from config at start-up.
IDLE_TIMEOUT = 300.0


def configure(idle_timeout: float) -> None:
    global IDLE_TIMEOUT
    IDLE_TIMEOUT = idle_timeout


#: Called once when a tunnel has ended: (bytes client->upstream, upstream->client, error).
Finished = Callable[[int, int, str], None]


class Side(asyncio.Protocol):
    """The protocol of one transport in a tunnel."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.tunnel: Tunnel | None = None
        #: Bytes received on this transport (and written to the peer).
        self.received = 0
        self.eof = False
        self.lost = False
        #: Received before the tunnel was joined; written to the peer when it is.
        self.pending: list[bytes] = []
        #: This side's transport has more buffered than it wants: the peer stops reading.
        self.write_paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        peer, tunnel = self.peer, self.tunnel
        if peer is None or tunnel is None or peer.transport is None:
            # Not joined yet: keep this chunk, read no more until the tunnel starts.
            self.pending.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        tunnel.last_activity = tunnel.loop.time()
        if not peer.lost:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        # Without a tunnel yet, the EOF is passed on when it starts.
        keep_open = True if self.tunnel is None else self.pass_eof()
        # A TLS transport closes on EOF whatever this returns (and warns if it is True).
        return keep_open and self.transport is not None and self.transport.can_write_eof()

    def pass_eof(self) -> bool:
        """Tell the peer this side has finished sending; False when this side may close."""
        peer = self.peer
        if peer is None or peer.transport is None or peer.lost:
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
            if peer.eof:
                peer.transport.close()
                return False
            return True  # the other direction goes on
        peer.transport.close()  # TLS has no half-close: flush and close
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.lost:
            if exc is None:
                peer.transport.close()
            else:
                peer.transport.abort()
        if self.tunnel is not None:
            self.tunnel.side_lost(self, exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.lost:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.lost:
            peer.transport.resume_reading()


class Tunnel:
    """Two joined sides: `client` (who opened it) and `upstream`."""

    def __init__(
        self,
        client: Side,
        upstream: Side,
        on_finished: Finished,
        idle_timeout: float | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.client = client
        self.upstream = upstream
        self.on_finished = on_finished
        self.idle_timeout = IDLE_TIMEOUT if idle_timeout is None else idle_timeout
        self.last_activity = self.loop.time()
        self.error = ""
        self.finished = False
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Join the sides: bytes either side received meanwhile are written, then both
        transports read freely."""
        client, upstream = self.client, self.upstream
        client.peer, upstream.peer = upstream, client
        client.tunnel = upstream.tunnel = self
        for side in (client, upstream):
            peer = side.peer
            assert peer is not None and peer.transport is not None
            pending, side.pending = side.pending, []
            for data in pending:
                peer.transport.write(data)
        for side in (client, upstream):
            peer = side.peer
            assert peer is not None and peer.transport is not None
            if side.lost:
                if not peer.lost:
                    peer.transport.close()
                self.side_lost(side, None)
            elif side.eof and not side.pass_eof():
                assert side.transport is not None
                side.transport.close()
            elif side.transport is not None and not peer.write_paused:
                # (Writing the other side's pending bytes may have filled this side's
                # peer already: then it resumes when that drains.)
                side.transport.resume_reading()
        if not self.finished:
            self._timer = self.loop.call_later(self.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        idle_for = self.loop.time() - self.last_activity
        if idle_for < self.idle_timeout:
            self._timer = self.loop.call_at(
                self.last_activity + self.idle_timeout, self._check_idle
            )
            return
        self._timer = None
        self.error = "tunnel-idle-timeout"
        log.info("closing a tunnel idle for %.1fs", idle_for)
        self.close()

    def close(self) -> None:
        for side in (self.client, self.upstream):
            if side.transport is not None and not side.lost:
                side.transport.close()

    def abort(self) -> None:
        for side in (self.client, self.upstream):
            if side.transport is not None and not side.lost:
                side.transport.abort()

    def side_lost(self, side: Side, exc: Exception | None) -> None:
        if exc is not None and not self.error:
            self.error = "client-reset" if side is self.client else "upstream-reset"
        if not (self.client.lost and self.upstream.lost) or self.finished:
            return
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            self.on_finished(self.client.received, self.upstream.received, self.error)
        except Exception:
            log.exception("tunnel completion failed")
