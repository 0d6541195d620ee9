"""The downstream side of HTTP/2: each stream becomes a `Request` through the listener's own
handler stack, its `Response` goes back as HEADERS, DATA and trailers.

A listener's `ServerConnection` (mesh/http1/server.py) hands the transport over when it sees
the h2c preface or ALPN `h2`, and stays in its tracker as the connection's stand-in: timeouts,
drain and aborts reach this protocol through it. Streams run inline (`mesh.inline`), one
coroutine each, with no task per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from mesh.errors import BadRequest, MeshError, RequestTimeout
from mesh.http1.body import Body
from mesh.http1.message import Request, Response
from mesh.http2.connection import H2Base
from mesh.http2.flow import CONNECTION_WINDOW, STREAM_WINDOW, StreamFlow
from mesh.http2.guard import Guard
from mesh.http2.headers import request_head, response_fields, trailer_fields
from mesh.inline import Inline
from mesh.respond import error_response

if TYPE_CHECKING:
    from mesh.http1.server import ServerConnection

log = logging.getLogger("mesh.http2.server")

#: SETTINGS_MAX_CONCURRENT_STREAMS (Envoy's edge: 100); streams past it get REFUSED_STREAM.
MAX_CONCURRENT_STREAMS = 100
#: The request version a stream's `Request` carries: how the layers tell HTTP/2 apart.
VERSION = b"2"


class _Connection(h2.connection.H2Connection):
    """`h2` answers a stream past the limit with a connection error; the server refuses
    such a stream alone (REFUSED_STREAM), counting the streams it still works on itself."""

    @property
    def open_inbound_streams(self) -> int:
        _ = super().open_inbound_streams  # the getter also forgets closed streams
        return 0


def take_over(shell: ServerConnection, data: bytes) -> None:
    """Make the connection HTTP/2: called with the first bytes (h2c) or b"" (ALPN h2)."""
    transport = shell.transport
    assert transport is not None
    server = H2Server(shell)
    shell.h2 = server
    transport.set_protocol(server)  # type: ignore[arg-type]
    server.start(transport, data)


class H2Server(H2Base):
    def __init__(self, shell: ServerConnection) -> None:
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,  # headers.py checks them, per stream
            normalize_inbound_headers=False,
            # What the layers pass on is lower-case bytes already, filtered by headers.py.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        super().__init__(_Connection(config=config))
        self.shell = shell
        self.handler = shell.handler
        self.tracker = shell.tracker
        self.limits = shell.limits
        self.scheme = shell.scheme
        self.peer = shell.peer
        self.peer_identity = shell.peer_identity
        self.guard = Guard()
        #: Streams whose request is in the stack or whose answer is being written.
        self.active = 0
        self.going_away = False
        self._last_activity = 0.0
        #: Since when a request head has been incomplete (0: none is).
        self._head_since = 0.0
        #: The last stream looked at: GOAWAY names it, not whatever else one read held.
        self._last_stream = 0

    def start(self, transport: asyncio.Transport, data: bytes) -> None:
        self.transport = transport
        now = self.loop.time()
        self._last_activity = now
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.limits.max_header_bytes,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            },
        )
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush_now()
        if data:
            self.data_received(data)

    # -- asyncio protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # the transport came from the HTTP/1.1 side (`take_over`)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for flow in list(self.flows.values()):
            if flow.body is not None:
                flow.body.fail(BadRequest("client closed the connection"))
        self._wake_all()
        self.shell.busy = False
        self.shell.connection_lost(exc)  # leaves the tracker; its idle HTTP/1.1 loop ends

    def eof_received(self) -> bool:
        return False

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.H2Error as exc:
            log.info("HTTP/2 protocol error from %s: %s", self.peer, exc)
            self.flush_now()
            self.close()
            return
        now = self.loop.time()
        self._last_activity = now
        for event in events:
            if self.closed:
                return
            self._event(event, now)
        self.flush_now()

    def _event(self, event: Any, now: float) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, event.headers, event.stream_ended is not None, now)
        elif isinstance(event, h2.events.DataReceived):
            flow = self.flows.get(event.stream_id)
            if not event.data and event.stream_ended is None and self.guard.control_frame(now):
                self._go_away(ErrorCodes.ENHANCE_YOUR_CALM, "empty DATA flood")
                return
            if flow is None:
                self.ack(event.stream_id, event.flow_controlled_length)
            else:
                flow.progress = now
                flow.received(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.TrailersReceived):
            flow = self.flows.get(event.stream_id)
            if flow is not None and flow.body is not None:
                flow.body.trailers = trailer_fields(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            flow = self.flows.get(event.stream_id)
            if flow is not None and flow.body is not None:
                flow.body.finish()
        elif isinstance(event, h2.events.StreamReset):
            self._stream_reset(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                for flow in list(self.flows.values()):
                    flow.wake()
            else:
                flow = self.flows.get(event.stream_id)
                if flow is not None:
                    flow.wake()
        elif isinstance(
            event,
            h2.events.PingReceived | h2.events.RemoteSettingsChanged | h2.events.PriorityUpdated,
        ):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                for flow in list(self.flows.values()):
                    flow.wake()  # INITIAL_WINDOW_SIZE may have grown
            if self.guard.control_frame(now):
                self._go_away(ErrorCodes.ENHANCE_YOUR_CALM, "control frame flood")
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            if not self.active:
                self.close()

    # -- streams ------------------------------------------------------------------------------
    def _request(
        self, stream_id: int, fields: list[tuple[bytes, bytes]], ended: bool, now: float
    ) -> None:
        self.guard.streams += 1
        self._last_stream = stream_id
        if self.going_away or self.tracker.draining:
            self._reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if self.active >= MAX_CONCURRENT_STREAMS:
            self.guard.refused += 1
            self._reset(stream_id, ErrorCodes.REFUSED_STREAM)
            # A stream opened past the limit did no work either: it counts as a reset one.
            if self.guard.reset_early():
                self._go_away(ErrorCodes.ENHANCE_YOUR_CALM, "too many streams reset early")
            return
        try:
            head = request_head(fields, self.limits.max_headers)
        except BadRequest as exc:
            log.info("malformed HTTP/2 request from %s: %s", self.peer, exc.detail)
            self._reset(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        flow = StreamFlow(stream_id, self.ack)
        flow.progress = now
        body: Body | None = None
        if not ended:
            body = flow.body = Body(flow, self.limits.body_buffer_bytes)
        request = Request(
            head.method,
            head.target,
            head.headers,
            authority=head.authority,
            body=body,
            content_length=head.content_length if body is not None else None,
            version=VERSION,
            client_addr=self.peer,
            scheme=self.scheme,
            received_at=now,
        )
        request.forwarded_for = head.forwarded_for
        request.peer_identity = self.peer_identity
        request.request_id = head.request_id
        self.flows[stream_id] = flow
        self.active += 1
        self.shell.busy = True
        Inline.start(self._serve(flow, request), lambda _, error: self._served(flow, error))

    def _reset(self, stream_id: int, code: ErrorCodes) -> None:
        with contextlib.suppress(h2.exceptions.H2Error):
            self.conn.reset_stream(stream_id, code)

    def _stream_reset(self, stream_id: int) -> None:
        flow = self.flows.get(stream_id)
        if flow is None:
            return
        flow.reset = True
        if flow.body is not None:
            flow.body.fail(BadRequest("client reset the stream"))
        flow.wake()
        if not flow.head_sent and self.guard.reset_early():
            self._go_away(ErrorCodes.ENHANCE_YOUR_CALM, "too many streams reset early")

    async def _serve(self, flow: StreamFlow, request: Request) -> None:
        try:
            response = await self.handler.handle(request)
        except Exception as exc:  # the stack's rescue layer should have caught it
            response = error_response(exc)
        sent, error = await self._respond(flow, request, response)
        if request.on_complete is not None:
            for callback in request.on_complete:
                try:
                    callback(request, response, sent, error)
                except Exception:
                    log.exception("completion callback failed")

    async def _respond(
        self, flow: StreamFlow, request: Request, response: Response
    ) -> tuple[int, str]:
        body = response.body
        if self.closed or flow.reset:
            if body is not None:
                body.abandon()
            return 0, "client-gone"
        status = response.status
        bodyless = request.method == b"HEAD" or status in (204, 304)
        if bodyless and body is not None:
            body.abandon()
            body = None
        ends_now = body is None or (body.at_eof and not body.trailers and not body_pending(body))
        fields = response_fields(status, response.headers, response.content_length)
        stream_id = flow.stream_id
        try:
            self.conn.send_headers(stream_id, fields, end_stream=ends_now)
        except h2.exceptions.H2Error:
            if body is not None:
                body.abandon()
            return 0, "client-gone"
        flow.head_sent = True
        self.flush()
        if ends_now:
            if body is not None:
                body.take_all()
            return 0, ""
        assert body is not None
        try:
            sent, complete = await self.send_body(flow, body)
        except MeshError as exc:
            # The upstream failed mid-body: the client must see the stream reset.
            log.info("upstream body failed for %s: %s", request, exc.detail)
            self._reset(stream_id, ErrorCodes.INTERNAL_ERROR)
            self.flush()
            return 0, "response-aborted"
        if not complete:
            return sent, "response-aborted"
        return sent, ""

    def _served(self, flow: StreamFlow, error: BaseException | None) -> None:
        self.active -= 1
        if not self.active:
            self.shell.busy = False
            self._last_activity = self.loop.time()
        if error is not None:
            log.error("an HTTP/2 stream from %s failed", self.peer, exc_info=error)
            self._reset(flow.stream_id, ErrorCodes.INTERNAL_ERROR)  # never left unanswered
            self.flush()
        body = flow.body
        if body is not None and not body.at_eof and not body.failed:
            body.abandon()  # answered before the request body ended: the rest is dropped
        self.flows.pop(flow.stream_id, None)
        if (self.going_away or self.tracker.draining) and not self.active:
            self.close()

    # -- the tracker's view (through the stand-in ServerConnection) ---------------------------
    def check_timeouts(self, now: float) -> None:
        limits = self.limits
        if self._write_paused and now - self._write_stalled_since > limits.write_timeout:
            self.abort("client stopped reading the response")
            return
        if self._head_pending():
            if not self._head_since:
                self._head_since = now
            elif now - self._head_since > limits.header_timeout:
                self._go_away(ErrorCodes.PROTOCOL_ERROR, "request head not received in time")
                return
        else:
            self._head_since = 0.0
        if not self.active and now - self._last_activity > limits.idle_timeout:
            self._go_away(ErrorCodes.NO_ERROR, "idle")
            return
        for flow in list(self.flows.values()):
            body = flow.body
            if (
                body is not None
                and not body.at_eof
                and not body.failed
                and not flow.paused
                and now - flow.progress > limits.body_timeout
            ):
                body.fail(RequestTimeout("request body stalled"))
                self._reset(flow.stream_id, ErrorCodes.CANCEL)
        self.flush()

    def _head_pending(self) -> bool:
        """A header block has begun and not ended: HEADERS awaiting its CONTINUATIONs, or a
        HEADERS/CONTINUATION frame only partly read (slowloris, HTTP/2 style)."""
        incoming = self.conn.incoming_buffer
        if getattr(incoming, "_headers_buffer", None):
            return True
        data = getattr(incoming, "_data", b"")
        return len(data) >= 4 and data[3] in (0x1, 0x9)

    def drain(self) -> None:
        """GOAWAY: no new streams; the connection closes once the open ones are answered."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        # Written by hand: `h2` takes its own GOAWAY as the end of the connection and would
        # refuse to send the answers still owed on open streams.
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = self.conn.highest_inbound_stream_id
        goaway.error_code = ErrorCodes.NO_ERROR
        self.flush_now()
        if self.transport is not None:
            self.transport.write(goaway.serialize())
        if not self.active:
            self.close()

    def _go_away(self, code: ErrorCodes, why: str) -> None:
        log.info("closing HTTP/2 connection from %s: %s", self.peer, why)
        self.going_away = True
        with contextlib.suppress(h2.exceptions.H2Error):
            self.conn.close_connection(code, last_stream_id=self._last_stream)
        self.flush_now()
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.flush_now()  # what was queued this turn goes out before the close
            self.closed = True
            self.transport.close()
            self._wake_all()

    def abort(self, why: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            log.info("aborting HTTP/2 connection from %s: %s", self.peer, why)
            self.transport.abort()
        self.closed = True
        self._wake_all()


def body_pending(body: Body) -> bool:
    """Bytes still buffered in a complete body (it is sent as DATA, not dropped)."""
    return body.received > 0
