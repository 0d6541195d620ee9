"""What the server and client sides of an HTTP/2 connection share: the `h2` state machine,
writing what it queues, the transport's write pausing, and sending a body within the
peer's flow-control windows."""

from __future__ import annotations

import asyncio

import h2.connection
import h2.exceptions

from mesh.http1.body import Body
from mesh.http2.flow import StreamFlow
from mesh.inline import Waiter

#: Above this many bytes queued for a peer that does not read, the connection is dropped:
#: PING/SETTINGS answers must not pile up without bound.
MAX_WRITE_BACKLOG = 4 * 1024 * 1024


class H2Base:
    def __init__(self, conn: h2.connection.H2Connection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_event_loop()
        self.closed = False
        self.flows: dict[int, StreamFlow] = {}
        self._write_paused = False
        self._write_stalled_since = 0.0
        self._drain_waiter: Waiter[None] | None = None
        self._flush_due = False

    def flush(self) -> None:
        """Write what `h2` queued, soon: the frames of every stream served in this turn of
        the loop go out in one write (a write per frame costs a system call each)."""
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._flush_due = False
        data = self.conn.data_to_send()
        transport = self.transport
        if data and transport is not None and not self.closed:
            transport.write(data)
            if self._write_paused and transport.get_write_buffer_size() > MAX_WRITE_BACKLOG:
                self.abort("the peer does not read what is sent to it")

    def abort(self, why: str) -> None:
        raise NotImplementedError

    def ack(self, stream_id: int, length: int) -> None:
        """The reader took `length` flow-controlled bytes: open the windows again."""
        if self.closed:
            return
        try:
            self.conn.acknowledge_received_data(length, stream_id)
        except h2.exceptions.H2Error:
            return
        self.flush()

    # -- transport write pausing ------------------------------------------------------------
    def pause_writing(self) -> None:
        self._write_paused = True
        self._write_stalled_since = self.loop.time()

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None:
            waiter.set_result(None)

    def _wake_all(self) -> None:
        """The connection ended: every waiting sender must see it."""
        self.resume_writing()
        for flow in list(self.flows.values()):
            flow.reset = True
            flow.wake()

    # -- sending ------------------------------------------------------------------------------
    async def send_body(self, flow: StreamFlow, body: Body) -> tuple[int, bool]:
        """Send `body` on the stream, then its trailers or END_STREAM; (bytes sent, whether
        it all went). A failed body (`MeshError`) propagates to the caller."""
        conn = self.conn
        stream_id = flow.stream_id
        sent = 0
        while data := await body.read():
            # Read whole and ended: this is the body's last piece (decided now, before a
            # wait below lets more arrive).
            final = body.at_eof and not body.trailers
            offset = 0
            while offset < len(data):
                if self.closed or flow.reset:
                    body.abandon()
                    return sent, False
                try:
                    window = min(
                        conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size
                    )
                except h2.exceptions.H2Error:
                    body.abandon()
                    return sent, False
                if window <= 0:
                    await flow.window()
                    continue
                chunk = data[offset : offset + window]
                offset += len(chunk)
                sent += len(chunk)
                # The last piece of a body without trailers carries END_STREAM itself.
                last = final and offset == len(data)
                conn.send_data(stream_id, chunk, end_stream=last)
                self.flush()
                if last:
                    return sent, True
                if self._write_paused and not self.closed:
                    self._drain_waiter = Waiter()
                    await self._drain_waiter
        if self.closed or flow.reset:
            return sent, False
        try:
            if body.trailers:
                conn.send_headers(stream_id, body.trailers, end_stream=True)
            else:
                conn.end_stream(stream_id)
        except h2.exceptions.H2Error:
            return sent, False
        self.flush()
        return sent, True
