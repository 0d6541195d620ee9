"""The downstream side: one asyncio protocol per client connection.

Parsing runs in protocol callbacks; parsed requests queue in order and each in turn runs
through the handler stack and writes its response, driven inline (`mesh.inline`) rather
than by a task. Bodies stream with the transports' flow control. Timeouts are enforced by
the tracker's sweep, so a request costs no timer of its own.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import httptools

from mesh.errors import BadRequest, HeadersTooLarge, MeshError, RequestTimeout
from mesh.http1.body import Body
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
    status_line,
)
from mesh.http1.parse import check_transfer_encoding, split_target, valid_authority
from mesh.http2 import PREFACE, Takeover
from mesh.identity.spiffe import peer_identity
from mesh.inline import Inline, Waiter
from mesh.policy import HttpLimits
from mesh.respond import error_response
from mesh.tunnel import websocket

if TYPE_CHECKING:
    from mesh.stack import Handler

log = logging.getLogger("mesh.http1.server")


# What the head parser does with a header, by lower-case name; None means "end-to-end".
_DROP: Final = 0
_HOST: Final = 1
_CL: Final = 2
_TE: Final = 3
_CONN: Final = 4
_XFF: Final = 5
_RID: Final = 6
_EXPECT: Final = 7
_UNDERSCORE: Final = 8
_UPGRADE: Final = 9
_PROXY_CONN: Final = 10
_SPECIAL: Final[dict[bytes, int]] = {
    b"host": _HOST,
    b"content-length": _CL,
    b"transfer-encoding": _TE,
    b"connection": _CONN,
    b"keep-alive": _DROP,
    b"proxy-connection": _PROXY_CONN,  # dropped; llhttp reads keep-alive from it too
    b"te": _DROP,
    b"trailer": _DROP,
    b"upgrade": _UPGRADE,  # removed, unless it asks for a WebSocket (mesh.tunnel)
    b"proxy-authorization": _DROP,
    b"proxy-authenticate": _DROP,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _DROP,
    # Only this proxy vouches for a caller: a client's own copy is removed (Envoy SANITIZE).
    b"x-forwarded-client-cert": _DROP,
    b"l5d-client-id": _DROP,  # Linkerd's caller-identity header: same rule
    b"x-request-id": _RID,
    b"expect": _EXPECT,
}
_NAMES: Final = HeaderNames(_SPECIAL, reject=_UNDERSCORE)
_HASH_SIGN: Final = 35  # ord("#")
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0"}
#: Set as the stop error once a WebSocket handshake is read: what follows is not HTTP.
_TUNNEL_NEXT: Final = BadRequest("bytes after a WebSocket handshake belong to its tunnel")

IDLE: Final = 0
HEAD: Final = 1
BODY: Final = 2


def _unwritable(data: bytes) -> None:
    raise ConnectionError("no transport yet")


class _Stop(Exception):
    """Raised inside a parser callback to abandon parsing with a MeshError."""

    def __init__(self, error: MeshError) -> None:
        super().__init__(error.detail)
        self.error = error


class ConnectionTracker:
    """Every connection of one listener: the connection limit, timeout sweeps and drain."""

    def __init__(self, limits: HttpLimits, name: str = "") -> None:
        self.limits = limits
        self.name = name
        self.connections: set[ServerConnection] = set()
        self.draining = False
        self.accepted = 0
        self.refused = 0
        self.refused_identity = 0
        self._empty: asyncio.Event | None = None

    def statistics(self) -> dict[str, int | bool]:
        active = sum(1 for c in self.connections if c.busy)
        return {
            "open": len(self.connections),
            "active": active,
            "idle": len(self.connections) - active,
            "accepted": self.accepted,
            "refused_over_limit": self.refused,
            "refused_no_identity": self.refused_identity,
            "draining": self.draining,
        }

    def add(self, conn: ServerConnection) -> bool:
        if len(self.connections) >= self.limits.max_connections or self.draining:
            self.refused += 1
            return False
        self.accepted += 1
        self.connections.add(conn)
        return True

    def discard(self, conn: ServerConnection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._empty is not None:
            self._empty.set()

    def sweep(self, now: float) -> None:
        for conn in list(self.connections):
            conn.check_timeouts(now)

    async def sweep_forever(self, interval: float = 0.25) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            self.sweep(loop.time())

    def start_drain(self) -> None:
        """No new requests on idle connections; active ones end with `Connection: close`."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()

    async def wait_empty(self) -> None:
        if not self.connections:
            return
        self._empty = asyncio.Event()
        await self._empty.wait()

    def abort_all(self) -> int:
        conns = list(self.connections)
        for conn in conns:
            conn.abort("drain deadline passed")
        return len(conns)


class ServerConnection:
    """HTTP/1.1 server side of one client connection."""

    def __init__(self, handler: Handler, tracker: ConnectionTracker, scheme: bytes = b"http"):
        self.handler = handler
        self.tracker = tracker
        self.limits = tracker.limits
        #: Read per chunk and per header: copied out of the policy (an interpreted
        #: dataclass, where each attribute read is a lookup by name).
        self._max_headers = self.limits.max_headers
        self._max_header_bytes = self.limits.max_header_bytes
        self._names = NameMemo(_NAMES)
        self.scheme = scheme
        self.loop = asyncio.get_event_loop()
        #: The loop's clock, bound once: a method lookup per call adds up on the hot path.
        self.now: Callable[[], float] = self.loop.time
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        #: The caller's verified SPIFFE ID on a TLS listener ("" on plaintext).
        self.peer_identity = ""
        self.closed = False
        self.busy = False
        #: The client has finished sending (FIN): answer what is queued, then close.
        self._peer_done = False
        self._new_parser()
        self._write: Callable[[bytes], None] = _unwritable
        self._queue: deque[Request | MeshError] = deque()
        self._idle_waiter: Waiter[None] | None = None
        self._stop_error: MeshError | None = None
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: Waiter[None] | None = None
        self._write_stalled_since = 0.0
        self._phase = IDLE
        self._phase_since = 0.0
        #: The clock when the chunk being parsed arrived (read once per `data_received`).
        self._tick = 0.0
        self._head_bytes = 0
        self._parsing_body: Body | None = None
        self._body_progress = 0.0
        self._valid_host = b""
        #: A response went out close-delimited: its end is the connection's end.
        self._close_after = False
        #: No byte read yet: the first ones may be HTTP/2's preface.
        self._fresh = True
        #: The HTTP/2 protocol (mesh.http2.server) this connection handed its transport to;
        #: the tracker still holds this object, which passes its calls on.
        self.h2: Takeover | None = None
        self._reset_head()

    # -- connection lifecycle -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        assert self.transport is not None
        self._write = self.transport.write
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.context.verify_mode != ssl.CERT_NONE:
            # The handshake is done and the chain verified; the caller's name is checked
            # here, before a single request byte is read. (A listener that asks no client
            # certificate, the gateway's public HTTPS, has no caller identity to check.)
            self.peer_identity = peer_identity(ssl_object)
            if not self.peer_identity:
                self.tracker.refused_identity += 1
                log.warning("refused a TLS peer from %s: no SPIFFE ID", self.peer)
                self.closed = True
                self.transport.abort()
                return
        if not self.tracker.add(self):
            self.closed = True
            self.transport.abort()
            return
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            from mesh.http2.server import take_over

            take_over(self, b"")
            return
        self._phase_since = self.now()
        Inline.start(self._serve(), self._serve_done)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.tracker.discard(self)
        body = self._parsing_body
        if body is not None:
            body.fail(BadRequest("client closed the connection mid-body"))
            self._parsing_body = None
        self._wake_drain()
        self._dispatch()  # an idle serving loop sees `closed` and ends

    def eof_received(self) -> bool:
        """The client finished sending (FIN, or TLS close_notify).

        With a request in hand, keep the connection open to write its answer (a half-close
        after the request is legal HTTP/1.1); an idle connection just closes.
        """
        body = self._parsing_body
        if body is not None:
            # A body cut short can never complete: its exchange fails (the upstream side
            # is dropped) and the connection closes.
            self._parsing_body = None
            body.fail(BadRequest("client closed the connection mid-body"))
            return False
        if self.busy or self._queue:
            self._peer_done = True
            return True
        self.close()
        return False

    def pause_writing(self) -> None:
        self._write_paused = True
        self._write_stalled_since = self.now()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None:
            waiter.set_result(None)

    def drain(self) -> None:
        if self.h2 is not None:
            self.h2.drain()
            return
        if not self.busy and not self._queue and self._phase == IDLE:
            self.close()
        # A busy connection sees tracker.draining when its response head is written.

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self, why: str) -> None:
        if self.h2 is not None:
            self.h2.abort(why)
            return
        if self.transport is not None and not self.transport.is_closing():
            log.info("aborting connection from %s: %s", self.peer, why)
            self.transport.abort()
        self.closed = True

    def check_timeouts(self, now: float) -> None:
        """Called by the tracker's sweep: slowloris, slow bodies, idle and unread responses."""
        if self.h2 is not None:
            self.h2.check_timeouts(now)
            return
        limits = self.limits
        elapsed = now - self._phase_since
        if self._phase == HEAD and elapsed > limits.header_timeout:
            self._fail(RequestTimeout("request head not received in time"))
        elif self._phase == BODY and not self._reading_paused:
            if now - self._body_progress > limits.body_timeout:
                self._fail(RequestTimeout("request body stalled"))
        elif (
            self._phase == IDLE
            and not self.busy
            and not self._queue
            and elapsed > limits.idle_timeout
        ):
            self.close()
        if self._write_paused and now - self._write_stalled_since > limits.write_timeout:
            self.abort("client stopped reading the response")

    # -- parsing (protocol callbacks) ---------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._fresh:  # the first bytes: HTTP/2's preface hands the connection over
            self._fresh = False
            if data[:3] == b"PRI" and data[:24] == PREFACE[: len(data)]:
                from mesh.http2.server import take_over

                take_over(self, data)
                return
        if self._stop_error is not None:
            return  # after a parse error nothing more is read
        # One clock reading per chunk, for every parser callback it causes.
        now = self._tick = self.now()
        if self._phase != BODY:
            self._head_bytes += len(data)
        else:
            self._body_progress = now
        while True:
            try:
                self._feed(data)
            except httptools.HttpParserCallbackError as exc:
                # httptools chains the callback's own exception as the context.
                stop = exc.__context__
                self._fail(stop.error if isinstance(stop, _Stop) else BadRequest("bad request"))
                return
            except httptools.HttpParserUpgrade as upgrade:
                data = data[upgrade.args[0] :] if upgrade.args else b""
                last = self._queue[-1] if self._queue else None
                if isinstance(last, Request) and last.upgrade is not None:
                    # A WebSocket handshake: nothing more is parsed, and reading pauses until
                    # the answer decides between a tunnel and closing.
                    last.upgrade.early = data
                    self._stop_error = _TUNNEL_NEXT
                    self.pause_reading()
                    break
                # Any other Upgrade is stripped: the request goes on as plain HTTP/1.1 and
                # parsing continues on a fresh parser.
                self._new_parser()
                if data:
                    continue
            except httptools.HttpParserError as exc:
                self._fail(BadRequest(f"malformed request: {exc}"))
                return
            break
        if self._phase == HEAD and self._head_bytes > self._max_header_bytes:
            self._fail(HeadersTooLarge(f"request head over {self._max_header_bytes} bytes"))
        elif self._queue:
            # Dispatch after the whole chunk is parsed, so a small body is complete by then.
            self._dispatch()

    def _fail(self, error: MeshError) -> None:
        """Stop reading; the error is answered after the responses already due."""
        if self._stop_error is None or self._stop_error is error:
            self._stop_error = error
        body = self._parsing_body
        if body is not None:
            self._parsing_body = None
            body.fail(error)
            # A request whose body broke before it was dispatched is never sent upstream:
            # the error answers it instead.
            for item in self._queue:
                if isinstance(item, Request) and item.body is body:
                    self._queue.remove(item)
                    break
        self._phase = IDLE
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        if not self._queue or not isinstance(self._queue[-1], MeshError):
            self._queue.append(error)
        self._dispatch()

    def _new_parser(self) -> None:
        # Its methods are bound once: a by-name lookup per call adds up on the hot path.
        parser = self._parser = httptools.HttpRequestParser(self)
        self._feed: Callable[[bytes], None] = parser.feed_data
        self._version: Callable[[], str] = parser.get_http_version
        self._method: Callable[[], bytes] = parser.get_method
        self._keeps_alive: Callable[[], bool] = parser.should_keep_alive

    def _reset_head(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._host: bytes | None = None
        self._cl: bytes | None = None
        self._chunked = False
        self._conn_tokens: list[bytes] | None = None
        self._proxy_conn = False
        self._xff: bytes | None = None
        self._rid: bytes | None = None
        self._expect = False
        self._upgrade: bytes | None = None
        self._count = 0
        self._size = 0

    def on_message_begin(self) -> None:
        self._reset_head()
        if self._phase != HEAD:
            self._phase = HEAD
            self._phase_since = self._tick

    def on_url(self, url: bytes) -> None:
        self._url = self._url + url if self._url else url
        if len(self._url) > self._max_header_bytes:
            raise _Stop(HeadersTooLarge("request target too long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        index = self._count
        self._count = index + 1
        if index >= self._max_headers:
            raise _Stop(HeadersTooLarge(f"more than {self._max_headers} headers"))
        # The chunk-level count in data_received catches a head still arriving; this one is
        # exact for a head that arrived whole.
        self._size += len(name) + len(value) + 4
        if self._size + len(self._url) > self._max_header_bytes:
            raise _Stop(HeadersTooLarge(f"request head over {self._max_header_bytes} bytes"))
        if value and (value[-1] == 32 or value[-1] == 9):
            # llhttp strips the whitespace before a value but not after it; it is not part
            # of the value (RFC 9112 §5), so it is neither checked nor forwarded.
            value = value.rstrip(b" \t")
        if self._phase == BODY:
            # A chunked body's trailer section: counted against the limits above, never
            # forwarded (the head is already built; a trailer must not become a header).
            return
        name, kind = self._names.lookup(index, name)
        if kind == END_TO_END:
            self._headers.append((name, value))
        elif kind == _UNDERSCORE:
            raise _Stop(BadRequest("underscore in a header name"))
        elif kind == _HOST:
            if self._host is not None:
                raise _Stop(BadRequest("more than one Host header"))
            self._host = value
        elif kind == _CL:
            self._cl = value
        elif kind == _TE:
            if self._chunked:
                raise _Stop(BadRequest("repeated Transfer-Encoding"))
            try:
                check_transfer_encoding(value)
            except MeshError as exc:
                raise _Stop(exc) from None
            self._chunked = True
        elif kind == _CONN:
            tokens = [t.strip().lower() for t in value.split(b",")]
            self._conn_tokens = (self._conn_tokens or []) + tokens
        elif kind == _XFF:
            self._xff = value if self._xff is None else self._xff + b", " + value
        elif kind == _RID:
            self._rid = value
        elif kind == _EXPECT:
            self._expect = value.lower() == b"100-continue"
        elif kind == _PROXY_CONN:
            self._proxy_conn = True
        elif kind == _UPGRADE:
            self._upgrade = value

    def on_headers_complete(self) -> None:
        try:
            request = self._build_request()
        except MeshError as exc:
            raise _Stop(exc) from None
        self._head_bytes = 0
        now = self._tick
        if request.body is not None:
            self._phase = BODY
            self._body_progress = now
            self._parsing_body = request.body
        else:
            self._phase = IDLE
        self._phase_since = now
        self._queue.append(request)
        if len(self._queue) > self.limits.max_pipelined and not self._reading_paused:
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def _build_request(self) -> Request:
        keep_alive = self._keeps_alive()
        tokens = self._conn_tokens
        if keep_alive and tokens is None and not self._proxy_conn:
            # llhttp accepts only HTTP/0.9, 1.0, 1.1 and 2.0, and with no Connection or
            # Proxy-Connection header keeps alive only a major and minor above 0: this is
            # 1.1, known without get_http_version() (which formats a string: the costliest
            # call of a request's parse).
            version: bytes | None = b"1.1"
        else:
            version = _VERSIONS.get(self._version())
        if version is None or (version == b"1.0" and not self.limits.allow_http10):
            raise BadRequest(f"HTTP/{self._version()} is not supported")
        method = self._method()
        url = self._url
        # An int operand: `b"#" in url` first tries b"#" as an int, and the TypeError it
        # raises and clears costs more than the rest of this check.
        if url[:1] == b"/" and _HASH_SIGN not in url and method != b"CONNECT":
            scheme, target, authority = b"http", url, None
        else:
            scheme, target, authority = split_target(method, url)
        host = self._host
        # Keep-alive clients repeat the same Host: check it once per connection.
        if host is not None and host != self._valid_host:
            if not valid_authority(host):
                raise BadRequest("malformed Host header")
            self._valid_host = host
        if authority is None:
            if host is None:
                if version == b"1.1":
                    raise BadRequest("missing Host header")
                host = b""
            authority = host
        headers = self._headers
        if tokens:
            listed = {t for t in tokens if t not in (b"close", b"keep-alive")}
            if listed:
                headers = [(n, v) for n, v in headers if n not in listed]
        content_length: int | None = None
        body: Body | None = None
        if self._chunked and version == b"1.0":
            # RFC 9112 §6.1: an HTTP/1.0 sender cannot mean chunked; the framing is faulty.
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if self._chunked:
            body = Body(self, self.limits.body_buffer_bytes)
        elif self._cl is not None:
            content_length = int(self._cl)
            if content_length:
                body = Body(self, self.limits.body_buffer_bytes)
        request = Request(
            method,
            target,
            headers,
            authority=authority,
            body=body,
            content_length=content_length,
            version=version,
            keep_alive=keep_alive,
            client_addr=self.peer,
            scheme=self.scheme if scheme == b"http" else scheme,
            received_at=self._tick,
        )
        request.forwarded_for = self._xff
        request.peer_identity = self.peer_identity
        if self._rid is not None:
            request.request_id = self._rid
        if self._upgrade is not None:
            request.upgrade = websocket.websocket_upgrade(
                method, version, self._upgrade, tokens, body is not None
            )
            if request.upgrade is not None:
                request.keep_alive = False  # after a refusal the connection closes
        if self._expect and body is not None and version == b"1.1":
            assert self.transport is not None
            self.transport.write(_CONTINUE)
        return request

    def on_body(self, data: bytes) -> None:
        body = self._parsing_body
        if body is not None:
            body.feed(data)

    def on_message_complete(self) -> None:
        body = self._parsing_body
        if body is not None:
            body.finish()
            self._parsing_body = None
        self._phase = IDLE
        self._phase_since = self._tick

    # -- flow control; also the request body's producer side (see Body) -------------------
    def abandoned(self) -> None:
        pass  # the connection closes after its response when a request body was left unread

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if (
            self._reading_paused
            and self._stop_error is None
            and self.transport is not None
            and len(self._queue) <= self.limits.max_pipelined
        ):
            self._reading_paused = False
            self._body_progress = self.now()
            self.transport.resume_reading()

    # -- the connection's one coroutine, driven inline ----------------------------------------
    def _dispatch(self) -> None:
        """Something is queued (a request, or an error to answer): wake the serving loop."""
        waiter = self._idle_waiter
        if waiter is not None:
            self._idle_waiter = None
            waiter.set_result(None)

    async def _serve(self) -> None:
        """Answer queued requests in order, one at a time, for the connection's whole life.

        One coroutine per connection rather than one per request: a request then costs no
        coroutine, driver or completion of its own, only a resumption.
        """
        while True:
            while not self._queue:
                if self.closed:
                    return
                waiter: Waiter[None] = Waiter()
                self._idle_waiter = waiter
                await waiter
            item = self._queue.popleft()
            if self._reading_paused and self._parsing_body is None:
                self.resume_reading()
            if isinstance(item, MeshError):
                if not (item.status == 408 and self._nothing_started()):
                    # An idle keep-alive expiring is not worth a 408; anything else is.
                    self.busy = True
                    await self._respond(None, error_response(item), keep_alive=False)
                self.close()
                return
            self.busy = True
            try:
                response = await self.handler.handle(item)
            except Exception as exc:  # the stack's rescue layer should have caught it
                response = error_response(exc)
            if response.status == 101 and item.upgrade is not None:
                await self._tunnel(item, response)
                return
            # A parse error queued behind this request is answered next, then the
            # connection closes; this response itself stays keep-alive.
            keep = (
                item.keep_alive
                and not self.tracker.draining
                and (item.body is None or item.body.at_eof)
            )
            # Most responses are written whole right here; only a streamed body waits.
            sent, error, stream = self._write_head(item, response, keep)
            if stream is not None:
                sent, error = await self._stream_rest(item, response, stream)
            ok = self._completed(item, response, sent, error)
            self.busy = False
            if (
                not (ok and keep)
                or self._close_after
                or ((self.tracker.draining or self._peer_done) and not self._queue)
            ):
                self.close()
                return
            self._phase_since = self.now()

    async def _tunnel(self, request: Request, response: Response) -> None:
        """The upstream switched protocols: the connection is a tunnel until both ends close,
        and the request completes (access log, metrics) when it does."""
        upgrade: websocket.Upgrade = request.upgrade
        transport = self.transport
        if self.closed or transport is None:
            if upgrade.upstream is not None and upgrade.upstream.transport is not None:
                upgrade.upstream.transport.abort()
            self._completed(request, response, 0, "client-gone")
            return
        finished: Waiter[tuple[int, int, str]] = Waiter()
        websocket.splice(
            transport, upgrade, response, lambda up, down, why: finished.set_result((up, down, why))
        )
        up, down, error = await finished
        # The client's bytes, for the access log, which reads them off the request body.
        request.body = Body.complete(b"")
        request.body.received = up
        self.closed = True
        self.tracker.discard(self)
        self._completed(request, response, down, error)

    def _serve_done(self, _: None, error: BaseException | None) -> None:
        self.busy = False
        if error is not None:
            log.error("connection from %s failed", self.peer, exc_info=error)
            self.abort("internal error")
            if not isinstance(error, Exception):
                raise error

    def _nothing_started(self) -> bool:
        return self._head_bytes == 0 and not self._url

    async def _respond(self, request: Request | None, response: Response, keep_alive: bool) -> bool:
        """Write one response; False when the connection can no longer be used."""
        sent, error, stream = self._write_head(request, response, keep_alive)
        if stream is not None:
            sent, error = await self._stream_rest(request, response, stream)
        return self._completed(request, response, sent, error)

    async def _stream_rest(
        self, request: Request | None, response: Response, stream: Body
    ) -> tuple[int, str]:
        """Stream a body whose head is written; (bytes sent, error word or "")."""
        chunked = response.content_length is None and (request is None or request.version == b"1.1")
        sent = await self._stream_body(stream, chunked)
        if sent < 0:
            return -sent - 1, "response-aborted"
        if response.content_length is not None and sent != response.content_length:
            self.abort("response body length did not match its Content-Length")
            return sent, "response-aborted"
        return sent, ""

    def _completed(
        self, request: Request | None, response: Response, sent: int, error: str
    ) -> bool:
        """Run the request's completion callbacks; False when the connection is unusable."""
        if request is not None and request.on_complete is not None:
            for callback in request.on_complete:
                try:
                    callback(request, response, sent, error)
                except Exception:
                    log.exception("completion callback failed")
        return not error

    def _write_head(
        self, request: Request | None, response: Response, keep_alive: bool
    ) -> tuple[int, str, Body | None]:
        """Write the head, and the body when it is already complete and not chunked.

        Returns (body bytes sent, error, body still to stream or None). Most responses
        end here, in one write, without a further wait.
        """
        transport = self.transport
        assert transport is not None
        status = response.status
        head_only = bodyless_status(status) or (request is not None and request.method == b"HEAD")
        body = response.body
        length = response.content_length
        lines = [status_line(status, response.reason)]
        append_headers(lines, response.headers)
        if length is not None:
            if status != 204 and status >= 200:
                lines.append(content_length_field(length))
        elif not head_only and body is not None:
            if request is None or request.version == b"1.1":
                lines.append(b"\r\ntransfer-encoding: chunked")
            else:
                keep_alive = False  # close-delimited for an HTTP/1.0 client
                self._close_after = True
        elif not head_only:
            lines.append(b"\r\ncontent-length: 0")
        if not keep_alive:
            lines.append(b"\r\nconnection: close")
        elif request is not None and request.version == b"1.0":
            lines.append(b"\r\nconnection: keep-alive")
        lines.append(END_OF_HEAD)
        if head_only or body is None:
            if body is not None and not body.at_eof:
                body.abandon()
            self._write(b"".join(lines))
            return 0, "", None
        if length is not None and body.at_eof:
            data = body.take_all()
            lines.append(data)  # head and body in one join, one write
            self._write(b"".join(lines))
            if len(data) != length:
                self.abort("response body length did not match its Content-Length")
                return len(data), "response-aborted", None
            return len(data), "", None
        transport.write(b"".join(lines))
        return 0, "", body

    async def _stream_body(self, body: Body, chunked: bool) -> int:
        """Copy the body downstream; returns bytes sent, or -(sent+1) when aborted."""
        transport = self.transport
        assert transport is not None
        sent = 0
        try:
            while True:
                data = await body.read()
                if not data:
                    break
                if self.closed:
                    body.abandon()
                    return -sent - 1
                sent += len(data)
                if chunked:
                    transport.write(b"%x\r\n%s\r\n" % (len(data), data))
                else:
                    transport.write(data)
                if self._write_paused:
                    self._drain_waiter = Waiter()
                    await self._drain_waiter
        except MeshError as exc:
            # The upstream failed mid-body: the client must see an abort, never a clean end.
            self.abort(f"upstream body failed: {exc.detail}")
            return -sent - 1
        if chunked:
            transport.write(b"0\r\n\r\n")
        return sent
