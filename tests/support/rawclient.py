"""Raw-socket HTTP/1.1 client helpers for data-plane tests.

`send_raw` writes exact bytes to a loopback port and reads until the server closes (or a
time limit passes), reporting whether it closed or reset. `parse_head` reads a status line
and headers out of raw bytes. `HttpConnection` is a keep-alive client that writes requests
(raw, Content-Length or chunked) and reads whole responses with h11, so the proxy's
framing is checked as strictly as a careful client would.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import h11


@dataclass
class RawResult:
    data: bytes
    #: The server closed the connection (FIN or RST) before the time limit.
    closed: bool
    #: The close was a reset.
    reset: bool
    elapsed: float


def send_raw(
    port: int,
    payload: bytes | Iterable[bytes],
    timeout: float = 5.0,
    *,
    host: str = "127.0.0.1",
) -> RawResult:
    """Send `payload`, then read until the server closes or `timeout` seconds pass."""
    start = time.monotonic()
    deadline = start + timeout
    pieces = [payload] if isinstance(payload, bytes) else payload
    received = bytearray()
    closed = reset = False
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server gave up on us first; read what it said
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = reset = True
                break
            if not data:
                closed = True
                break
            received += data
    return RawResult(bytes(received), closed, reset, time.monotonic() - start)


@dataclass
class Head:
    """A response's status line and headers as they appeared on the wire."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    #: Everything after the blank line that ends the head.
    rest: bytes

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None


def parse_head(data: bytes) -> Head:
    """Parse the first response head in `data` (CRLF line endings required)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise ValueError(f"no complete response head in {data[:200]!r}")
    lines = data[:end].decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"header line without a colon: {line!r}")
        headers.append((name, value.strip(" \t")))
    return Head(version, int(code), reason, headers, data[end + 4 :])


class IncompleteResponse(Exception):
    """The connection ended (reset or close) before a response was complete."""

    def __init__(self, why: str, status: int | None, body_received: int) -> None:
        super().__init__(f"{why} (status {status}, {body_received} body bytes)")
        self.why = why
        self.status = status
        self.body_received = body_received


@dataclass
class Response:
    status: int
    #: (name, value) as received, names lower-cased by h11.
    headers: list[tuple[str, str]]
    body: bytes
    body_size: int
    body_sha256: str
    #: "length", "chunked", "close" (read to EOF) or "none" (no body by definition).
    framing: str
    extra: dict[str, object] = field(default_factory=dict)

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n == name]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None


def chunked(pieces: Iterable[bytes]) -> Iterable[bytes]:
    """Chunked transfer coding of `pieces` (empty pieces skipped), ending with the last chunk."""
    for piece in pieces:
        if piece:
            yield b"%x\r\n" % len(piece) + piece + b"\r\n"
    yield b"0\r\n\r\n"


class HttpConnection:
    """A keep-alive HTTP/1.1 client connection to a loopback port."""

    def __init__(self, port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self._buffer = b""
        self._eof = False

    def __enter__(self) -> HttpConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes | Iterable[bytes]) -> None:
        for piece in [data] if isinstance(data, bytes) else data:
            self.sock.sendall(piece)

    def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | Iterable[bytes] | None = None,
        *,
        host: str = "app",
        chunked_body: bool = False,
    ) -> None:
        """Write one request. A bytes body gets Content-Length unless `chunked_body`."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        lines += [f"{n}: {v}" for n, v in headers]
        if body is not None:
            if chunked_body or not isinstance(body, bytes):
                lines.append("Transfer-Encoding: chunked")
            else:
                lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if body is None:
            self.sock.sendall(head)
        elif isinstance(body, bytes) and not chunked_body:
            self.sock.sendall(head + body)
        else:
            self.sock.sendall(head)
            self.send(chunked([body] if isinstance(body, bytes) else body))

    def read_response(
        self,
        method: str = "GET",
        *,
        keep_body: int = 4 * 1024 * 1024,
        on_data: Callable[[bytes], None] | None = None,
    ) -> Response:
        """Read the next complete response (to a request made with `method`)."""
        parser = h11.Connection(h11.CLIENT, max_incomplete_event_size=1024 * 1024)
        parser.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        parser.send(h11.EndOfMessage())
        if self._buffer:
            parser.receive_data(self._buffer)
            self._buffer = b""
        if self._eof:
            parser.receive_data(b"")
        hasher = hashlib.sha256()
        status: int | None = None
        headers: list[tuple[str, str]] = []
        body = bytearray()
        size = 0
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                raise IncompleteResponse(
                    f"malformed or cut response: {exc}", status, size
                ) from None
            if event is h11.NEED_DATA:
                try:
                    data = self.sock.recv(256 * 1024)
                except ConnectionResetError:
                    raise IncompleteResponse("connection reset", status, size) from None
                except TimeoutError:
                    raise IncompleteResponse("timed out", status, size) from None
                if not data:
                    self._eof = True
                parser.receive_data(data)
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = [(n.decode(), v.decode("latin-1")) for n, v in event.headers]
            elif isinstance(event, h11.Data):
                size += len(event.data)
                hasher.update(event.data)
                if len(body) < keep_body:
                    body += event.data[: keep_body - len(body)]
                if on_data is not None:
                    on_data(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise IncompleteResponse("connection closed before a response", status, size)
        leftover, eof = parser.trailing_data
        self._buffer = leftover
        self._eof = self._eof or eof
        assert status is not None
        names = {n for n, _ in headers}
        if method == "HEAD" or status in (204, 304) or status < 200:
            framing = "none"
        elif "transfer-encoding" in names:
            framing = "chunked"
        elif "content-length" in names:
            framing = "length"
        else:
            framing = "close"
        return Response(status, headers, bytes(body), size, hasher.hexdigest(), framing)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """Wait up to `timeout` for the server to close; True when it did (FIN or RST)."""
        if self._eof:
            return True
        if self._buffer:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(self.timeout)
        if data:
            self._buffer += data
            return False
        self._eof = True
        return True
