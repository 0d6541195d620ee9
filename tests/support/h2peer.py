"""A blocking HTTP/2 client and a threaded h2c application, both on the `h2` library, for
tests that drive the sidecar's HTTP/2 listeners and its HTTP/2 upstream connections.

    with H2App() as app:                    # h2c app: /echo, /download?size=N, /status/N
        client = H2Peer(port)               # h2c prior knowledge (or TLS with ALPN h2)
        response = client.request("POST", "/echo", body=b"x")
        assert response.trailers["x-trailer"] == "done"
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

Fields = list[tuple[str, str]]


def pump_sends(
    conn: h2.connection.H2Connection,
    sending: dict[int, tuple[Iterator[bytes], bytes, Fields | None]],
    flush: Callable[[], None],
) -> None:
    """Send what each stream has queued as far as flow control lets it, then its end (or
    trailers); streams the window stops stay queued for the next call."""
    for sid in list(sending):
        chunks, pending, trailers = sending[sid]
        while True:
            if not pending:
                pending = next(chunks, b"")
                if not pending:
                    if trailers:
                        conn.send_headers(sid, trailers, end_stream=True)
                    else:
                        conn.end_stream(sid)
                    del sending[sid]
                    break
            try:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                del sending[sid]
                break
            if window <= 0:
                sending[sid] = (chunks, pending, trailers)
                break
            conn.send_data(sid, pending[:window])
            pending = pending[window:]
            flush()
    flush()


def _text(fields: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {n.decode(): v.decode() for n, v in fields}


@dataclass
class H2Response:
    stream_id: int
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    #: Bytes received and their sha256 (the body is kept only up to `keep` bytes).
    size: int = 0
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    ended: bool = False
    reset_code: int | None = None
    keep: int = 8 * 1024 * 1024

    def take(self, data: bytes) -> None:
        self.size += len(data)
        self.sha256.update(data)
        if len(self.body) < self.keep:
            self.body.extend(data)

    @property
    def digest(self) -> str:
        return self.sha256.hexdigest()


class H2Peer:
    """One HTTP/2 client connection over a blocking socket."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None, timeout: float = 20.0) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="mesh")
        self.sock = sock
        self.timeout = timeout
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.responses: dict[int, H2Response] = {}
        self._sending: dict[int, tuple[Iterator[bytes], bytes, Fields | None]] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self._flush()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> H2Peer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def start(
        self,
        method: str,
        path: str,
        headers: Fields = (),  # type: ignore[assignment]
        body: bytes | Iterator[bytes] | None = None,
        trailers: Fields | None = None,
        authority: str = "app",
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":scheme", "http"), (":authority", authority)]
        fields += [(":path", path), *headers]
        no_body = body is None or body == b""
        self.conn.send_headers(sid, fields, end_stream=no_body and not trailers)
        self.responses[sid] = H2Response(sid)
        if not no_body or trailers:
            chunks = iter([body]) if isinstance(body, bytes) else (body or iter(()))
            self._sending[sid] = (chunks, b"", trailers)  # type: ignore[assignment]
        self._flush()
        self._pump_sends()
        return sid

    def _pump_sends(self) -> None:
        pump_sends(self.conn, self._sending, self._flush)
        self._flush()

    def receive_once(self) -> bool:
        """Read and handle one socket read; False when the connection has closed."""
        try:
            data = self.sock.recv(1 << 20)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return False
        for event in self.conn.receive_data(data):
            self.handle(event)
        self._pump_sends()
        self._flush()
        return True

    def handle(self, event: object) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            r = self.responses[event.stream_id]
            fields = _text(event.headers)
            r.status = int(fields.pop(":status"))
            r.headers = fields
        elif isinstance(event, h2.events.TrailersReceived):
            self.responses[event.stream_id].trailers = _text(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self.responses[event.stream_id].take(event.data)
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.responses[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            r = self.responses.get(event.stream_id)
            if r is not None:
                r.reset_code = int(event.error_code)
                r.ended = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def wait(self, sid: int) -> H2Response:
        deadline = time.monotonic() + self.timeout
        response = self.responses[sid]
        while not response.ended:
            if time.monotonic() > deadline:
                raise AssertionError(f"stream {sid}: no complete response in {self.timeout}s")
            if not self.receive_once():
                raise AssertionError(f"stream {sid}: connection closed ({self.goaway})")
        return response

    def request(
        self,
        method: str,
        path: str,
        headers: Fields = (),  # type: ignore[assignment]
        body: bytes | Iterator[bytes] | None = None,
        trailers: Fields | None = None,
        authority: str = "app",
    ) -> H2Response:
        return self.wait(self.start(method, path, headers, body, trailers, authority))


class H2App:
    """An h2c application in a thread. Paths:

    - /echo: the request body back, with trailers x-trailer: done, grpc-status: 0 and the
      request's own trailers under x-request-trailer-<name>
    - /download?size=N: N bytes (a repeating pattern), trailer x-sha256
    - /upload: headers and trailers carry the request body's size and sha256
    - /status/N: status N, empty body, trailers-only style when N is 200 with grpc-status 14
    - /reset: RST_STREAM(INTERNAL_ERROR) instead of an answer
    - /goaway: an answer, then GOAWAY(NO_ERROR) and the connection closes
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[dict[str, str]] = []
        self.connections = 0
        #: (path, number of the connection it came on), for every request.
        self.served_on: list[tuple[str, int]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def __enter__(self) -> H2App:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stop:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            conn = _AppConnection(self, sock, self.connections)
            threading.Thread(target=conn.run, daemon=True).start()


PATTERN = bytes(range(256)) * 256  # 64 KiB, every byte value


def pattern(size: int) -> Iterator[bytes]:
    sent = 0
    while sent < size:
        chunk = PATTERN[: min(len(PATTERN), size - sent)]
        sent += len(chunk)
        yield chunk


class _AppConnection:
    def __init__(self, app: H2App, sock: socket.socket, number: int) -> None:
        self.app = app
        self.sock = sock
        self.number = number
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.heads: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, tuple[int, hashlib._Hash, bytearray]] = {}
        self.req_trailers: dict[int, dict[str, str]] = {}
        #: stream -> (chunks, pending bytes, trailers)
        self.sending: dict[int, tuple[Iterator[bytes], bytes, Fields | None]] = {}

    def run(self) -> None:
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    return
                for event in self.conn.receive_data(data):
                    self.handle(event)
                self.pump()
        except (OSError, h2.exceptions.ProtocolError):
            return
        finally:
            self.sock.close()

    def handle(self, event: object) -> None:
        if isinstance(event, h2.events.RequestReceived):
            head = _text(event.headers)
            self.heads[event.stream_id] = head
            self.app.requests.append(head)
            self.app.served_on.append((head[":path"], self.number))
            self.bodies[event.stream_id] = (0, hashlib.sha256(), bytearray())
        elif isinstance(event, h2.events.DataReceived):
            size, digest, kept = self.bodies[event.stream_id]
            digest.update(event.data)
            if len(kept) < 4 * 1024 * 1024:
                kept.extend(event.data)
            self.bodies[event.stream_id] = (size + len(event.data), digest, kept)
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            self.req_trailers[event.stream_id] = _text(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            self.respond(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.sending.pop(event.stream_id, None)

    def respond(self, sid: int) -> None:
        head = self.heads.pop(sid)
        size, digest, kept = self.bodies.pop(sid)
        url = urlsplit(head[":path"])
        query = parse_qs(url.query)
        trailers: Fields = []
        if url.path == "/echo":
            chunks: Iterator[bytes] = iter([bytes(kept)])
            headers = [("content-type", "application/octet-stream")]
            trailers = [("x-trailer", "done"), ("grpc-status", "0")]
            for name, value in self.req_trailers.pop(sid, {}).items():
                trailers.append((f"x-request-trailer-{name}", value))
        elif url.path == "/download":
            total = int(query["size"][0])
            chunks = pattern(total)
            headers = [("content-type", "application/octet-stream")]
            expected = hashlib.sha256()
            for chunk in pattern(total):
                expected.update(chunk)
            trailers = [("x-sha256", expected.hexdigest())]
        elif url.path == "/upload":
            chunks = iter([b"ok\n"])
            headers = [("x-size", str(size)), ("x-sha256", digest.hexdigest())]
            trailers = [("x-size", str(size))]
        elif url.path == "/reset":
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        elif url.path == "/goaway":
            self.conn.send_headers(sid, [(":status", "200")], end_stream=True)
            self.conn.close_connection()
            self.sock.sendall(self.conn.data_to_send())
            self.sock.shutdown(socket.SHUT_RDWR)
            return
        elif url.path.startswith("/status/"):
            status = url.path.rsplit("/", 1)[1]
            fields = [(":status", status), ("grpc-status", "14"), ("grpc-message", "down")]
            self.conn.send_headers(sid, fields, end_stream=True)
            return
        else:
            chunks = iter([b"hello over h2\n"])
            headers = [("x-seen-path", head[":path"])]
        self.conn.send_headers(sid, [(":status", "200"), *headers])
        self.sending[sid] = (chunks, b"", trailers)

    def pump(self) -> None:
        pump_sends(self.conn, self.sending, self._flush)

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)
