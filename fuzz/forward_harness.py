"""In-process harness over the request parser and forwarder, with the smuggling invariants.

Bytes go into a real `ServerConnection` (the downstream parser, compiled as in production)
over an in-memory transport. Its handler does what the forwarding end of the stack does:
serialise the head with `request_head` (the function the connect layer uses) and frame the
body as the upstream client does (Content-Length bytes as they are, or re-chunked). The
forwarded bytes are then read back with h11, an independent strict parser.

Invariants (`check` raises `InvariantBroken`):

1. One message in, at most one out: every request the proxy dispatched produces one
   forwarded stream holding exactly one message, never more, with nothing after it. A
   request whose body broke produces no complete message at all.
2. Re-parsing what was forwarded gives what was parsed: method, target, Host, end-to-end
   headers in order and the body are equal.
3. A forwarded head never has both Content-Length and Transfer-Encoding, and a
   Transfer-Encoding is exactly `chunked`.
4. The proxy's own answers are well-formed: each reply the client gets parses with h11, and
   a refusal (4xx/5xx) is the last thing on the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import h11

from mesh.errors import MeshError
from mesh.http1.client import request_head
from mesh.http1.message import Request, Response
from mesh.http1.server import ConnectionTracker, ServerConnection
from mesh.policy import HttpLimits
from mesh.stack import Handler


class InvariantBroken(AssertionError):
    """The proxy forwarded or answered something a smuggling-safe proxy never would."""


@dataclass
class Forwarded:
    request: Request
    #: The bytes the upstream would have received for this request.
    wire: bytes
    #: The body as the proxy read it (possibly partial when it broke).
    body: bytes
    #: The body arrived whole (False: the upstream connection would be aborted).
    complete: bool


@dataclass
class Outcome:
    forwarded: list[Forwarded] = field(default_factory=list)
    #: Everything the proxy wrote back to the client.
    replies: bytes = b""
    closed: bool = False


class MemoryTransport:
    """The parts of an asyncio transport a `ServerConnection` uses."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class ForwardingHandler(Handler):
    """The far end of the stack: serialises each request as the upstream side would."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome

    async def handle(self, request: Request) -> Response:
        wire = bytearray(request_head(request))
        chunked = request.body is not None and request.content_length is None
        body = bytearray()
        complete = True
        if request.body is not None:
            try:
                while data := await request.body.read():
                    body += data
                    wire += b"%x\r\n%s\r\n" % (len(data), data) if chunked else data
            except (MeshError, ConnectionAbortedError):
                complete = False
            if chunked and complete:
                wire += b"0\r\n\r\n"
        self.outcome.forwarded.append(Forwarded(request, bytes(wire), bytes(body), complete))
        return Response.local(200, b"ok")


_LOOP: asyncio.AbstractEventLoop | None = None
LIMITS = HttpLimits()


def _loop() -> asyncio.AbstractEventLoop:
    """The connection reads the loop's clock; nothing here runs on it."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        asyncio.set_event_loop(_LOOP)
    return _LOOP


def run(pieces: Iterable[bytes], limits: HttpLimits = LIMITS) -> Outcome:
    """Feed `pieces` (one read each) to a fresh connection, then end it as a client would."""
    _loop()
    outcome = Outcome()
    transport = MemoryTransport()
    conn = ServerConnection(ForwardingHandler(outcome), ConnectionTracker(limits))
    conn.connection_made(transport)
    for piece in pieces:
        if transport.closing:
            break
        conn.data_received(piece)
    if not transport.closing:
        conn.eof_received()
    conn.connection_lost(None)
    outcome.replies = bytes(transport.written)
    outcome.closed = transport.closing
    return outcome


def _fail(what: str, data: bytes | None = None) -> InvariantBroken:
    return InvariantBroken(what + (f"\ninput: {data[:600]!r}" if data is not None else ""))


def reparse_request(item: Forwarded) -> None:
    """Invariants 1-3 for one forwarded stream."""
    request, wire = item.request, item.wire
    head = wire.split(b"\r\n\r\n", 1)[0].lower()
    names = [line.split(b":", 1)[0] for line in head.split(b"\r\n")[1:]]
    if b"content-length" in names and b"transfer-encoding" in names:
        raise _fail(f"both Content-Length and Transfer-Encoding forwarded: {head!r}")
    if names.count(b"content-length") + names.count(b"transfer-encoding") > 1:
        raise _fail(f"repeated framing header forwarded: {head!r}")
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=1024 * 1024)
    parser.receive_data(wire)
    events: list[Any] = []
    try:
        while (event := parser.next_event()) is not h11.NEED_DATA:
            events.append(event)
            if isinstance(event, h11.EndOfMessage):
                break
    except h11.RemoteProtocolError as exc:
        raise _fail(f"forwarded message refused by h11 ({exc}): {wire[:400]!r}") from None
    ended = bool(events) and isinstance(events[-1], h11.EndOfMessage)
    if ended != item.complete:
        raise _fail(f"complete={item.complete} but h11 saw end={ended}: {wire[:400]!r}")
    leftover, _ = parser.trailing_data
    if leftover:
        raise _fail(f"bytes after the forwarded message: {leftover[:200]!r}")
    if not events or not isinstance(events[0], h11.Request):
        raise _fail(f"no request head in what was forwarded: {wire[:400]!r}")
    seen = events[0]
    body = b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data))
    expected_headers = [(n, v) for n, v in request.headers]
    got_headers = [
        (bytes(n), bytes(v))
        for n, v in seen.headers
        if n not in (b"host", b"content-length", b"transfer-encoding")
    ]
    host = [bytes(v) for n, v in seen.headers if n == b"host"]
    mismatch = (
        bytes(seen.method) != request.method
        or bytes(seen.target) != request.target
        or host != [request.authority]
        or got_headers != expected_headers
        or body != item.body
    )
    if mismatch:
        raise _fail(
            "re-parse differs from the proxy's parse: "
            f"{(request.method, request.target, request.authority, expected_headers)!r} vs "
            f"{(seen.method, seen.target, host, got_headers)!r}"
        )


def check_replies(outcome: Outcome) -> None:
    """Invariant 4: the client can read every answer; a refusal ends the connection."""
    data = outcome.replies
    while data:
        parser = h11.Connection(h11.CLIENT, max_incomplete_event_size=1024 * 1024)
        parser.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        parser.send(h11.EndOfMessage())
        parser.receive_data(data)
        status = 0
        try:
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    raise _fail(f"unterminated reply: {data[:300]!r}")
                if isinstance(event, h11.Response):
                    status = event.status_code
                if isinstance(event, h11.EndOfMessage):
                    break
        except h11.RemoteProtocolError as exc:
            raise _fail(f"malformed reply ({exc}): {data[:300]!r}") from None
        data, _ = parser.trailing_data
        if status >= 400 and data:
            raise _fail(f"bytes written after a {status} refusal: {data[:200]!r}")


def check(data: bytes, pieces: Iterable[bytes] | None = None) -> Outcome:
    """Run the input (optionally split into `pieces`) and check every invariant."""
    outcome = run([data] if pieces is None else pieces)
    for item in outcome.forwarded:
        try:
            reparse_request(item)
        except InvariantBroken as exc:
            raise _fail(str(exc), data) from None
    try:
        check_replies(outcome)
    except InvariantBroken as exc:
        raise _fail(str(exc), data) from None
    return outcome
