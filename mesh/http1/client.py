"""The upstream side: one asyncio protocol per pooled connection to an endpoint.

`exchange()` writes a request and returns once the response head has arrived; the body then
streams through a `Body` whose flow control pauses this connection. The connection returns to
its pool by itself when both the request and the response are complete.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

import httptools

from mesh.errors import MeshError, UpstreamProtocolError, UpstreamReset, UpstreamTimeout
from mesh.http1.body import Body
from mesh.http1.deadlines import SWEEPER
from mesh.http1.message import (
    END_OF_HEAD,
    END_TO_END,
    HeaderNames,
    NameMemo,
    Request,
    Response,
    append_headers,
    bodyless_status,
    content_length_field,
)
from mesh.inline import Inline, Waiter

if TYPE_CHECKING:
    from mesh.http1.pool import EndpointPool
    from mesh.resilience.limits import ResourceGauge

log = logging.getLogger("mesh.http1.client")

# What the response head parser does with a header, by lower-case name (None: end-to-end).
_DROP: Final = 0
_CL: Final = 1
_TE: Final = 2
_CONN: Final = 3
_SPECIAL: Final = {
    b"content-length": _CL,
    b"transfer-encoding": _TE,
    b"connection": _CONN,
    b"keep-alive": _DROP,
    b"proxy-connection": _DROP,
    b"te": _DROP,
    b"trailer": _DROP,
    b"upgrade": _DROP,
    b"proxy-authenticate": _DROP,
}


_NAMES: Final = HeaderNames(_SPECIAL)


def _unwritable(data: bytes) -> None:
    raise ConnectionError("not connected yet")


class _HeadResponseDone(Exception):
    """Stops the parser after a response to HEAD: it has no body whatever its headers say."""


def request_head(request: Request) -> bytes:
    """Serialise a request head for the upstream, framing re-derived from our own parse."""
    lines = [request.method, b" ", request.target, b" HTTP/1.1\r\nhost: ", request.authority]
    append_headers(lines, request.headers)
    if request.content_length is not None:
        lines.append(content_length_field(request.content_length))
    elif request.body is not None:
        lines.append(b"\r\ntransfer-encoding: chunked")
    lines.append(END_OF_HEAD)
    return b"".join(lines)


def as_protocol(conn: object) -> asyncio.Protocol:
    """Our connection classes are native (compiled) classes, so they cannot derive from
    asyncio.Protocol; they implement its methods, which is all the event loop calls."""
    return cast(asyncio.Protocol, conn)


class UpstreamConnection:
    """HTTP/1.1 client side of one connection to one endpoint."""

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        #: The upstream's connection cap this connection counts against (pool.py).
        self.gauge: ResourceGauge | None = None
        self.loop = asyncio.get_event_loop()
        #: The loop's clock, bound once: a method lookup per call adds up on the hot path.
        self.now: Callable[[], float] = self.loop.time
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.busy = False
        self.idle_since = 0.0
        self.requests = 0
        self._names = NameMemo(_NAMES)
        self._new_parser()
        self._write: Callable[[bytes], None] = _unwritable
        self._waiter: Waiter[Response] | None = None
        self._parsed: Response | None = None
        self._body: Body | None = None
        self._close_delimited = False
        self._head_request = False
        self._request_done = True
        self._response_done = True
        self._keep_alive = True
        self._write_paused = False
        self._drain_waiter: Waiter[None] | None = None
        self._surplus = False
        #: Loop time by which the response head must arrive (read by the deadline sweeper).
        self.deadline = 0.0
        self._reset_head()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "busy" if self.busy else "idle"
        return f"<UpstreamConnection {self.pool.label} {state} requests={self.requests}>"

    # -- lifecycle ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._write = self.transport.write  # type: ignore[union-attr]  # bound once

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        self._fail_waiter(UpstreamReset("upstream closed the connection before a response"))
        body = self._body
        if body is not None:
            self._body = None
            if self._close_delimited and exc is None:
                body.finish()
            else:
                body.fail(UpstreamReset("upstream closed the connection mid-body"))
        self._wake_drain()

    def ssl_object(self) -> ssl.SSLObject | None:
        transport = self.transport
        if transport is None:
            return None
        obj: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        return obj

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True

    def eof_received(self) -> bool:
        """The upstream finished sending: a close-delimited body ends here, and an idle
        pooled connection is simply gone; `connection_lost` settles both."""
        return False

    def pause_writing(self) -> None:
        self._write_paused = True

    # -- the response body's producer side (see Body) -------------------------------------
    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abandoned(self) -> None:
        self.abort()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None:
            waiter.set_result(None)

    def expire(self) -> None:
        """The deadline passed before the response head arrived."""
        self._fail_waiter(UpstreamTimeout(f"no response from {self.pool.label} in time"))

    def _fail_waiter(self, error: MeshError) -> None:
        # Every resolver clears `_waiter` before resolving: once a connection is released,
        # the next exchange may set its own, and nothing may clear that one by mistake.
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.set_exception(error)

    # -- the exchange -------------------------------------------------------------------------
    async def exchange(self, head: bytes, request: Request, deadline: float | None) -> Response:
        transport = self.transport
        assert transport is not None and not self.busy
        self.busy = True
        self.requests += 1
        self._head_request = request.method == b"HEAD"
        self._response_done = False
        self._surplus = False
        waiter: Waiter[Response] = Waiter()
        self._waiter = waiter
        body = request.body
        if body is None:
            self._request_done = True
            self._write(head)
        elif body.at_eof:
            self._request_done = True
            data = body.take_all()
            if request.content_length is None:
                data = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)) if data else b"0\r\n\r\n"
            self._write(head + data)
        else:
            self._request_done = False
            transport.write(head)
            Inline.start(self._send_body(body, request.content_length), self._pump_done)
        if deadline is not None:
            self.deadline = deadline
            SWEEPER.waiting.add(self)
        try:
            return await waiter
        except BaseException:
            # Whatever ended the wait (timeout, cancellation), this connection's state is
            # unknown: a late response must never reach another request.
            self.abort()
            raise
        finally:
            if deadline is not None:
                SWEEPER.waiting.discard(self)

    async def _send_body(self, body: Body, length: int | None) -> None:
        transport = self.transport
        assert transport is not None
        chunked = length is None
        try:
            while data := await body.read():
                if self.closed:
                    return
                transport.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                if self._write_paused:
                    self._drain_waiter = Waiter()
                    await self._drain_waiter
            if chunked:
                transport.write(b"0\r\n\r\n")
        except MeshError as exc:
            # The client's body broke (malformed chunk, client gone): the caller hears the
            # client's fault, not an upstream reset, and the half-sent request is dropped.
            log.debug("request body failed: %s", exc.detail)
            self._fail_waiter(exc)
            self.abort()
            return
        except ConnectionAbortedError:
            self.abort()
            return
        self._request_done = True
        self._maybe_release()

    def _pump_done(self, _: None, error: BaseException | None) -> None:
        if error is not None:
            log.error("sending a request body to %s failed", self.pool.label, exc_info=error)
            self.abort()

    def _maybe_release(self) -> None:
        if self._request_done and self._response_done and self.busy:
            self.busy = False
            if self._keep_alive and not self.closed:
                self.idle_since = self.now()
                self.pool.release(self)
            else:
                self.abort()

    # -- parsing (protocol callbacks) ---------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if not self.busy:
            log.warning("%s sent %d bytes with no request outstanding", self.pool.label, len(data))
            self.pool.protocol_errors += 1
            self.abort()
            return
        try:
            self._feed(data)
        except httptools.HttpParserCallbackError:
            if self._surplus:
                # More bytes than the one response: deliver that response, then drop this
                # connection so the extra bytes can never answer someone else's request.
                log.warning("%s sent bytes past the end of its response", self.pool.label)
                self.pool.protocol_errors += 1
                self._keep_alive = False
            elif self._head_request and self._response_done:
                self._new_parser()
            else:
                self._protocol_error("invalid response")
        except httptools.HttpParserError as exc:
            self._protocol_error(str(exc))
        if self.closed:
            return
        # The head is handed over, and the connection released, only after the whole chunk
        # is parsed: a small response then reaches the client in one write with its body,
        # and bytes past the response's end are seen before anyone can reuse the connection.
        response = self._parsed
        if response is not None:
            self._parsed = None
            waiter = self._waiter
            if waiter is not None:
                self._waiter = None
                waiter.set_result(response)
            elif response.body is not None:
                response.body.abandon()  # nobody waits any more (timed out): drop it
        if self._response_done:
            self._maybe_release()

    def _protocol_error(self, what: str) -> None:
        self.pool.protocol_errors += 1
        error = UpstreamProtocolError(f"upstream sent a malformed response: {what}")
        self._fail_waiter(error)
        if self._body is not None:
            self._body.fail(error)
            self._body = None
        self.abort()

    def _new_parser(self) -> None:
        # Its methods are bound once: a by-name lookup per call adds up on the hot path.
        parser = self._parser = httptools.HttpResponseParser(self)
        self._feed: Callable[[bytes], None] = parser.feed_data
        self._status: Callable[[], int] = parser.get_status_code
        self._keeps_alive: Callable[[], bool] = parser.should_keep_alive

    def _reset_head(self) -> None:
        self._headers: list[tuple[bytes, bytes]] = []
        self._index = 0
        self._reason = b""
        self._cl: int | None = None
        self._chunked = False
        self._conn_tokens: list[bytes] = []

    def on_message_begin(self) -> None:
        if self._response_done:
            self._surplus = True
            raise ValueError("a response with no request outstanding")
        self._reset_head()

    def on_status(self, reason: bytes) -> None:
        self._reason = self._reason + reason if self._reason else reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._body is not None:
            return  # a chunked body's trailer: never part of the head already handed on
        index = self._index
        self._index = index + 1
        name, kind = self._names.lookup(index, name)
        if kind == END_TO_END:
            self._headers.append((name, value))
        elif kind == _CL:
            self._cl = int(value)
        elif kind == _TE:
            if value.strip().lower() != b"chunked":
                raise ValueError("unsupported transfer-encoding in response")
            self._chunked = True
        elif kind == _CONN and value != b"keep-alive":  # the common value lists no header
            self._conn_tokens.extend(t.strip().lower() for t in value.split(b","))

    def on_headers_complete(self) -> None:
        status = self._status()
        if status < 200:
            return  # interim (100 Continue, 103): not forwarded
        self._keep_alive = self._keeps_alive()
        headers = self._headers
        if self._conn_tokens:
            listed = {t for t in self._conn_tokens if t not in (b"close", b"keep-alive")}
            if listed:
                headers = [(n, v) for n, v in headers if n not in listed]
        no_body = self._head_request or bodyless_status(status)
        body: Body | None = None
        self._close_delimited = False
        if not no_body and (self._chunked or self._cl is None or self._cl > 0):
            body = Body(self)
            self._close_delimited = not self._chunked and self._cl is None
            if self._close_delimited:
                self._keep_alive = False
        self._body = body
        length = self._cl if not self._chunked else None
        if self._head_request and self._chunked:
            length = None
        self._parsed = Response(status, headers, body, length, self._reason)
        if self._head_request:
            self._finish_response()
            raise _HeadResponseDone

    def on_body(self, data: bytes) -> None:
        body = self._body
        if body is not None:
            body.feed(data)

    def on_message_complete(self) -> None:
        if self._status() < 200:
            return
        self._finish_response()

    def _finish_response(self) -> None:
        body = self._body
        if body is not None:
            self._body = None
            body.finish()
        self._response_done = True
