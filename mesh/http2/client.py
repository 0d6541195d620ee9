"""The upstream side of HTTP/2: one connection carrying many concurrent exchanges.

`exchange()` opens a stream, sends the request (its body within the peer's windows) and
returns at the response head; the body then streams through a `Body` whose reader drives
the WINDOW_UPDATEs. A connection that got GOAWAY or died takes no new stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from mesh.errors import MeshError, UpstreamProtocolError, UpstreamReset, UpstreamTimeout
from mesh.http1.body import Body
from mesh.http1.deadlines import SWEEPER
from mesh.http1.message import Request, Response
from mesh.http2.connection import H2Base
from mesh.http2.errors import StreamRefused
from mesh.http2.flow import CONNECTION_WINDOW, STREAM_WINDOW, StreamFlow
from mesh.http2.headers import NOT_FORWARDED, message_fields, trailer_fields
from mesh.inline import Inline, Waiter

log = logging.getLogger("mesh.http2.client")

#: Streams opened on one connection before the peer's SETTINGS say how many it takes.
DEFAULT_MAX_STREAMS = 100


class _Exchange(StreamFlow):
    """One stream: the response head's waiter and the deadline sweeper's view of it."""

    __slots__ = ("client", "deadline", "head_request", "waiter")

    def __init__(self, client: H2Client, stream_id: int, head_request: bool) -> None:
        super().__init__(stream_id, client.ack)
        self.client = client
        self.waiter: Waiter[Response] | None = Waiter()
        self.head_request = head_request
        self.deadline = 0.0

    def fail(self, error: MeshError) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.set_exception(error)
        elif self.body is not None:
            self.body.fail(error)
        self.reset = True
        self.wake()

    def abandoned(self) -> None:
        """The response body's reader gave up: the upstream stops sending it."""
        self.discard = True
        self.client.cancel(self)

    def expire(self) -> None:
        """The deadline passed before the response head (mesh.http1.deadlines)."""
        if self.waiter is not None:
            self.client.cancel(self)
            self.fail(UpstreamTimeout(f"no response from {self.client.label} in time"))


class H2Client(H2Base):
    def __init__(self, label: str, scheme: bytes, on_lost: Callable[[H2Client], None]) -> None:
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            # What the layers pass on is lower-case bytes already, filtered by headers.py.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        super().__init__(h2.connection.H2Connection(config=config))
        self.label = label
        self.scheme = scheme
        self._on_lost = on_lost
        #: GOAWAY received (or sent): no new stream.
        self.going_away = False
        #: The peer's SETTINGS have arrived (its stream limit is known).
        self.peer_settled = False
        self.streams_opened = 0
        #: The upstream's connection cap this connection counts against (pool.py).
        self.gauge: Any = None

    # -- asyncio protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            },
        )
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush_now()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.going_away = True
        for flow in list(self.flows.values()):
            assert isinstance(flow, _Exchange)
            flow.fail(UpstreamReset(f"connection to {self.label} lost"))
        self.flows.clear()
        self._wake_all()
        self._on_lost(self)

    def eof_received(self) -> bool:
        return False

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.H2Error as exc:
            log.warning("%s broke HTTP/2: %s", self.label, exc)
            self.flush_now()
            self._fail_all(UpstreamProtocolError(f"{self.label} broke HTTP/2: {exc}"))
            self.abort("protocol error")
            return
        for event in events:
            self._event(event)
        self.flush_now()

    def _event(self, event: Any) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            flow = self._flow(event.stream_id)
            if flow is not None:
                self._head(flow, event.headers, event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            flow = self._flow(event.stream_id)
            if flow is None:
                self.ack(event.stream_id, event.flow_controlled_length)
            else:
                flow.received(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.TrailersReceived):
            flow = self._flow(event.stream_id)
            if flow is not None and flow.body is not None:
                flow.body.trailers = trailer_fields(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            flow = self._flow(event.stream_id)
            if flow is not None:
                self._ended(flow)
        elif isinstance(event, h2.events.StreamReset):
            flow = self._flow(event.stream_id)
            if flow is not None:
                self.flows.pop(flow.stream_id, None)
                if event.error_code == ErrorCodes.REFUSED_STREAM:
                    flow.fail(StreamRefused(f"{self.label} refused the stream"))
                else:
                    code = _code_name(event.error_code)
                    flow.fail(UpstreamReset(f"{self.label} reset the stream ({code})"))
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                self.peer_settled = True
            stream_id = getattr(event, "stream_id", 0)
            for waiting in self.flows.values():
                if not stream_id or waiting.stream_id == stream_id:
                    waiting.wake()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for stream in list(self.flows.values()):
                if stream.stream_id > last:
                    assert isinstance(stream, _Exchange)
                    self.flows.pop(stream.stream_id, None)
                    stream.fail(StreamRefused(f"{self.label} sent GOAWAY before the stream"))
            if event.error_code != ErrorCodes.NO_ERROR:
                code = _code_name(event.error_code)
                self._fail_all(UpstreamReset(f"{self.label} sent GOAWAY ({code})"))
                self.abort("GOAWAY")
            elif not self.flows:
                self.close()

    def _flow(self, stream_id: int) -> _Exchange | None:
        flow = self.flows.get(stream_id)
        return flow if isinstance(flow, _Exchange) else None

    def _head(self, flow: _Exchange, fields: list[tuple[bytes, bytes]], ended: bool) -> None:
        status_text = next((v for n, v in fields if n == b":status"), b"")
        if not status_text.isdigit():
            self.cancel(flow)
            flow.fail(UpstreamProtocolError(f"{self.label} sent a response without :status"))
            return
        status = int(status_text)
        headers, length = message_fields(fields)
        body: Body | None = None
        if not ended and not flow.head_request and status not in (204, 304):
            body = flow.body = Body(flow)
        elif not ended:
            flow.discard = True  # a body where none may be: dropped
        waiter, flow.waiter = flow.waiter, None
        SWEEPER.waiting.discard(flow)
        response = Response(status, headers, body, length if body is not None else None)
        if waiter is not None:
            waiter.set_result(response)
        elif body is not None:
            body.abandon()
        if ended:
            self._ended(flow)

    def _ended(self, flow: _Exchange) -> None:
        body = flow.body
        if body is not None:
            body.finish()
        if flow.head_sent:  # the request is fully sent too: the stream is done
            self._forget(flow)

    def _forget(self, flow: _Exchange) -> None:
        if self.flows.pop(flow.stream_id, None) is not None and self.going_away and not self.flows:
            self.close()

    def _fail_all(self, error: MeshError) -> None:
        for flow in list(self.flows.values()):
            assert isinstance(flow, _Exchange)
            flow.fail(error)
        self.flows.clear()

    # -- the exchange -------------------------------------------------------------------------
    def can_take(self) -> bool:
        if self.closed or self.going_away:
            return False
        # Until the peer's SETTINGS arrive its limit reads as unbounded (RFC 9113 §6.5.2);
        # assume the common 100 meanwhile, so a burst at connect time is not refused.
        limit = self.conn.remote_settings.max_concurrent_streams
        cap = DEFAULT_MAX_STREAMS if not self.peer_settled else DEFAULT_MAX_STREAMS * 10
        return len(self.flows) < min(limit, cap)

    async def exchange(self, request: Request) -> Response:
        conn = self.conn
        stream_id = conn.get_next_available_stream_id()
        flow = _Exchange(self, stream_id, request.method == b"HEAD")
        self.flows[stream_id] = flow
        self.streams_opened += 1
        fields = [
            (b":method", request.method),
            (b":scheme", self.scheme),
            (b":authority", request.authority),
            (b":path", request.target),
        ]
        fields.extend((n, v) for n, v in request.headers if n not in NOT_FORWARDED)
        fields.append((b"te", b"trailers"))
        body = request.body
        if request.content_length is not None:
            fields.append((b"content-length", b"%d" % request.content_length))
        ends_now = body is None or (body.at_eof and body.received == 0 and not body.trailers)
        try:
            conn.send_headers(stream_id, fields, end_stream=ends_now)
        except h2.exceptions.H2Error as exc:
            self.flows.pop(stream_id, None)
            raise StreamRefused(f"cannot open a stream to {self.label}: {exc}") from None
        self.flush()
        waiter = flow.waiter
        assert waiter is not None
        if ends_now:
            flow.head_sent = True  # here: the request is fully sent
        else:
            assert body is not None
            Inline.start(self._send_request_body(flow, body), _logged)
        deadline = request.deadline
        if deadline is not None:
            flow.deadline = deadline
            SWEEPER.waiting.add(flow)
        try:
            return await waiter
        finally:
            if deadline is not None:
                SWEEPER.waiting.discard(flow)

    async def _send_request_body(self, flow: _Exchange, body: Body) -> None:
        try:
            _, complete = await self.send_body(flow, body)
        except MeshError as exc:
            # The client's body broke: the upstream sees the stream cancelled, the caller
            # hears the client's fault.
            self.cancel(flow)
            flow.fail(exc)
            return
        except ConnectionAbortedError:
            self.cancel(flow)
            return
        if complete:
            flow.head_sent = True
            if flow.waiter is None and (flow.body is None or flow.body.at_eof):
                self._forget(flow)

    def cancel(self, flow: _Exchange) -> None:
        """Stop a stream the caller gave up on."""
        if self.flows.pop(flow.stream_id, None) is None or self.closed:
            return
        try:
            self.conn.reset_stream(flow.stream_id, ErrorCodes.CANCEL)
        except h2.exceptions.H2Error:
            return
        self.flush()

    # -- ending -------------------------------------------------------------------------------
    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.flush_now()  # what was queued this turn goes out before the close
            self.closed = True
            self.going_away = True
            self.transport.close()

    def abort(self, why: str) -> None:
        if self.transport is not None and not self.closed:
            log.info("dropping HTTP/2 connection to %s: %s", self.label, why)
            self.transport.abort()
        self.closed = True
        self.going_away = True


def _code_name(code: Any) -> str:
    return getattr(code, "name", str(code))


def _logged(_: None, error: BaseException | None) -> None:
    if error is not None:
        log.error("sending a request body over HTTP/2 failed", exc_info=error)
