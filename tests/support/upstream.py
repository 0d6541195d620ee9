"""A recording upstream: a threaded loopback HTTP/1.1 server for data-plane tests.

It stands where an application would, behind the sidecar under test, and keeps evidence of
everything the proxy forwarded: per connection, every raw byte received (up to a cap, always
counted) and every request parsed with h11 (method, target, headers with their original
names, body). Each request is answered by the current `handler`, a function from the
recorded request to a `Reply`; the default echoes the sha256 of the request body.

A `Reply` can shape the answer the way a misbehaving server would: chunked, Content-Length
or close-delimited framing, a body given as bytes or as an iterator of chunks, HEAD/204/304
semantics, a delay before the head, an abort (RST or FIN) part-way through the body, raw
bytes sent verbatim, or unsolicited bytes some time after the answer.

    with RecordingUpstream() as upstream:
        ...  # point a sidecar at 127.0.0.1:upstream.port
        upstream.handler = lambda req: Reply(status=204)
        assert upstream.requests[0].header("host") == "app"
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal

import h11

RAW_LIMIT = 8 * 1024 * 1024
BODY_LIMIT = 2 * 1024 * 1024


def _text(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


@dataclass
class RecordedRequest:
    """One request exactly as the upstream parsed it."""

    conn_id: int
    method: str
    target: str
    http_version: str
    #: (name, value) in arrival order, names with their original case.
    headers: list[tuple[str, str]]
    #: The body, up to the upstream's `body_limit` bytes (see `body_size`/`body_sha256`).
    body: bytes = b""
    body_size: int = 0
    body_sha256: str = ""
    received_at: float = 0.0

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    def header_names(self) -> set[str]:
        return {n.lower() for n, _ in self.headers}


@dataclass
class Reply:
    """How the upstream answers one request."""

    status: int = 200
    headers: Sequence[tuple[str | bytes, str | bytes]] = ()
    #: Body bytes, or an iterable of chunks (each becomes one chunk when chunked).
    body: bytes | Iterable[bytes] = b""
    #: "length": Content-Length; "chunked"; "close": no framing, close after the body;
    #: "none": only the headers given (for HEAD/304 answers that state their own length).
    framing: Literal["length", "chunked", "close", "none"] = "length"
    #: Content-Length to announce with an iterable body (or to lie about the length).
    content_length: int | None = None
    #: Seconds to wait before sending anything.
    delay: float = 0.0
    #: Abort after this many body bytes: "rst" resets, "fin" closes cleanly.
    abort_after: int | None = None
    abort_with: Literal["rst", "fin"] = "rst"
    #: Bytes sent verbatim instead of a serialised response (b"" sends nothing).
    raw: bytes | None = None
    #: Close the connection (FIN) once the reply has been sent.
    close: bool = False
    #: Reset the connection (RST) once the reply has been sent.
    reset: bool = False
    #: (seconds, bytes): unsolicited bytes sent that long after the reply.
    late: tuple[float, bytes] | None = None


Handler = Callable[[RecordedRequest], Reply]


def echo_sha256(request: RecordedRequest) -> Reply:
    """The default answer: 200 whose body is the hex sha256 of the request body."""
    return Reply(
        headers=[
            ("Content-Type", "text/plain"),
            ("X-Echo-Method", request.method),
            ("X-Echo-Target", request.target),
            ("X-Echo-Body-Size", str(request.body_size)),
            ("X-Echo-Conn", str(request.conn_id)),
        ],
        body=request.body_sha256.encode() + b"\n",
    )


@dataclass
class UpstreamConnection:
    """One accepted connection and what arrived on it."""

    id: int
    peer: tuple[str, int]
    raw: bytearray = field(default_factory=bytearray)
    raw_size: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)
    #: "eof" when the peer closed, "reset" when it reset, "upstream" when we closed first.
    ended_by: str = ""
    #: The peer closed part-way through a request (head or body).
    incomplete_request: bool = False
    closed: threading.Event = field(default_factory=threading.Event)


class RecordingUpstream:
    """Loopback HTTP/1.1 server recording everything it receives; a context manager."""

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        raw_limit: int = RAW_LIMIT,
        body_limit: int = BODY_LIMIT,
    ) -> None:
        self.handler: Handler = handler or echo_sha256
        self.raw_limit = raw_limit
        self.body_limit = body_limit
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._all: list[UpstreamConnection] = []
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._requests: list[RecordedRequest] = []
        self._raw_log: list[tuple[int, bytes]] = []
        self._raw_logged = 0
        self._raw_total = 0
        self._base = 0
        #: Problems on the upstream side (bytes h11 refused, handler exceptions).
        self.errors: list[str] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(512)
        self.port: int = self._listener.getsockname()[1]
        self._accepter = threading.Thread(target=self._accept_loop, name="upstream-accept")
        self._accepter.daemon = True
        self._accepter.start()

    # -- evidence -----------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """Every complete request since the last `reset()`, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> list[UpstreamConnection]:
        """Connections accepted since the last `reset()`."""
        with self._lock:
            return self._all[self._base :]

    @property
    def connections_opened(self) -> int:
        with self._lock:
            return len(self._all) - self._base

    def connection(self, conn_id: int) -> UpstreamConnection:
        """The record of connection `conn_id` (e.g. a recorded request's `conn_id`)."""
        with self._lock:
            return next(c for c in self._all if c.id == conn_id)

    def connections_used(self) -> list[UpstreamConnection]:
        """Connections (new or reused) that received bytes since the last `reset()`."""
        with self._lock:
            ids = list(dict.fromkeys(conn_id for conn_id, _ in self._raw_log))
            return [c for c in self._all if c.id in ids]

    def raw_bytes_total(self) -> int:
        """Bytes received on any connection since the last `reset()`."""
        with self._lock:
            return self._raw_total

    def raw_received(self) -> bytes:
        """The bytes received since the last `reset()`, in arrival order (capped)."""
        with self._lock:
            return b"".join(data for _, data in self._raw_log)

    def reset(self, handler: Handler | None = None) -> None:
        """Forget the evidence so far (connections stay open) and set the handler."""
        with self._lock:
            self._requests = []
            self._raw_log = []
            self._raw_logged = 0
            self._raw_total = 0
            self._base = len(self._all)
            self.errors = []
        self.handler = handler or echo_sha256

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> RecordingUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5)

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not selector.select(0.05):
                    continue
                try:
                    sock, peer = self._listener.accept()
                except OSError:
                    continue
                record = UpstreamConnection(next(self._ids), peer)
                thread = threading.Thread(
                    target=self._serve, args=(sock, record), name=f"upstream-{record.id}"
                )
                thread.daemon = True
                with self._lock:
                    self._all.append(record)
                    self._sockets.add(sock)
                    self._threads.append(thread)
                thread.start()

    # -- one connection -----------------------------------------------------------------------
    def _record_raw(self, record: UpstreamConnection, data: bytes) -> None:
        with self._lock:
            record.raw_size += len(data)
            room = self.raw_limit - len(record.raw)
            if room > 0:
                record.raw += data[:room]
            self._raw_total += len(data)
            room = self.raw_limit - self._raw_logged
            if room > 0:
                self._raw_log.append((record.id, data[:room]))
                self._raw_logged += min(room, len(data))

    def _new_parser(self, leftover: bytes = b"", eof: bool = False) -> h11.Connection:
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=1024 * 1024)
        if leftover:
            parser.receive_data(leftover)
        if eof:
            parser.receive_data(b"")
        return parser

    def _serve(self, sock: socket.socket, record: UpstreamConnection) -> None:
        try:
            with sock:
                self._serve_requests(sock, record)
        except OSError as exc:
            if not record.ended_by:
                record.ended_by = "reset" if isinstance(exc, ConnectionResetError) else "error"
        except Exception as exc:  # recorded for the test to see, never raised in a thread
            self.errors.append(f"connection {record.id}: {exc!r}")
        finally:
            with self._lock:
                self._sockets.discard(sock)
            record.closed.set()

    def _serve_requests(self, sock: socket.socket, record: UpstreamConnection) -> None:
        parser = self._new_parser()
        current: RecordedRequest | None = None
        hasher = hashlib.sha256()
        while not self._stop.is_set():
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                if record.ended_by == "eof":
                    # The peer gave up part-way through a message: evidence, not an error.
                    record.incomplete_request = current is not None or bool(parser.trailing_data[0])
                    return
                self.errors.append(f"connection {record.id}: h11 refused the bytes: {exc}")
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                record.ended_by = "upstream"
                return
            if event is h11.NEED_DATA:
                try:
                    data = sock.recv(256 * 1024)
                except ConnectionResetError:
                    record.ended_by = "reset"
                    record.incomplete_request = current is not None or bool(parser.trailing_data[0])
                    return
                if data:
                    self._record_raw(record, data)
                else:
                    record.ended_by = "eof"
                parser.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                record.ended_by = record.ended_by or "eof"
                return
            if isinstance(event, h11.Request):
                current = RecordedRequest(
                    conn_id=record.id,
                    method=event.method.decode("latin-1"),
                    target=event.target.decode("latin-1"),
                    http_version=event.http_version.decode("latin-1"),
                    headers=[
                        (n.decode("latin-1"), v.decode("latin-1"))
                        for n, v in event.headers.raw_items()
                    ],
                )
                hasher = hashlib.sha256()
            elif isinstance(event, h11.Data):
                assert current is not None
                data = bytes(event.data)
                hasher.update(data)
                if current.body_size < self.body_limit:
                    current.body += data[: self.body_limit - current.body_size]
                current.body_size += len(data)
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                current.body_sha256 = hasher.hexdigest()
                current.received_at = time.monotonic()
                with self._lock:
                    record.requests.append(current)
                    self._requests.append(current)
                request, current = current, None
                keep_open = self._answer(sock, record, request)
                if not keep_open:
                    return
                leftover, eof = parser.trailing_data
                parser = self._new_parser(leftover, eof)

    def _answer(
        self, sock: socket.socket, record: UpstreamConnection, request: RecordedRequest
    ) -> bool:
        """Send the handler's reply; False when the connection is finished."""
        try:
            reply = self.handler(request)
        except Exception as exc:
            self.errors.append(f"handler failed on {request.method} {request.target}: {exc!r}")
            reply = Reply(status=500, body=b"handler failed\n", close=True)
        if reply.delay and self._stop.wait(reply.delay):
            return False
        if reply.raw is not None:
            sock.sendall(reply.raw)
            return self._finish(sock, record, reply)
        head_only = (
            request.method == "HEAD" or reply.status in (204, 304) or 100 <= reply.status < 200
        )
        chunks: Iterable[bytes]
        if isinstance(reply.body, bytes | bytearray):
            chunks = [bytes(reply.body)] if reply.body else []
            length = len(reply.body) if reply.content_length is None else reply.content_length
        else:
            chunks = reply.body
            length = reply.content_length
        headers = [(_text(n), _text(v)) for n, v in reply.headers]
        names = {n.lower() for n, _ in headers}
        close = reply.close or reply.framing == "close"
        no_framing_status = reply.status in (204, 304) or reply.status < 200
        if reply.framing == "length" and not no_framing_status and b"content-length" not in names:
            if length is None:
                chunks = [b"".join(chunks)]
                length = len(chunks[0])
            headers.append((b"Content-Length", b"%d" % length))
        elif reply.framing == "chunked" and not no_framing_status:
            headers.append((b"Transfer-Encoding", b"chunked"))
        if close and b"connection" not in names:
            headers.append((b"Connection", b"close"))
        try:
            reason = HTTPStatus(reply.status).phrase.encode()
        except ValueError:
            reason = b"Unknown"
        head = b"HTTP/1.1 %d %s\r\n" % (reply.status, reason)
        head += b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"
        sock.sendall(head)
        if not head_only and not self._send_body(sock, record, reply, chunks):
            return False
        return self._finish(sock, record, reply)

    def _send_body(
        self, sock: socket.socket, record: UpstreamConnection, reply: Reply, chunks: Iterable[bytes]
    ) -> bool:
        chunked = reply.framing == "chunked"
        budget = reply.abort_after
        for chunk in chunks:
            if not chunk:
                continue
            if budget is not None and len(chunk) >= budget:
                chunk = chunk[:budget]
                if chunk:
                    sock.sendall(b"%x\r\n%s" % (len(chunk), chunk) if chunked else chunk)
                self._abort(sock, record, reply.abort_with)
                return False
            if budget is not None:
                budget -= len(chunk)
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        if budget is not None:
            self._abort(sock, record, reply.abort_with)
            return False
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        return True

    def _abort(self, sock: socket.socket, record: UpstreamConnection, how: str) -> None:
        record.ended_by = "upstream"
        if how == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_WR)

    def _finish(self, sock: socket.socket, record: UpstreamConnection, reply: Reply) -> bool:
        if reply.late is not None:
            delay, data = reply.late
            if self._stop.wait(delay):
                return False
            sock.sendall(data)
        if reply.reset:
            self._abort(sock, record, "rst")
            return False
        if reply.close or reply.framing == "close":
            record.ended_by = "upstream"
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            return False
        return True


def chunks_of(data: bytes, sizes: Sequence[int]) -> Iterator[bytes]:
    """Split `data` into pieces whose sizes cycle through `sizes` (each >= 1)."""
    pos = 0
    for size in itertools.cycle(sizes):
        if pos >= len(data):
            return
        yield data[pos : pos + size]
        pos += size
