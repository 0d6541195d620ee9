"""Request and response as the layers see them, and their HTTP/1.1 serialisation.

Header names are lower-case bytes; `headers` holds only end-to-end headers: framing
(Content-Length, Transfer-Encoding), Host and hop-by-hop headers are parsed into fields and
written back by the serialiser, so no layer can forward a smuggling-shaped head by accident.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from mesh.http1.body import Body

Headers = list[tuple[bytes, bytes]]
#: Called once a response is written or aborted: (request, response, body bytes sent, error).
Completion = Callable[["Request", "Response | None", int, str], None]

#: Hop-by-hop headers (RFC 9110 §7.6.1) plus the proxy-only ones; never forwarded.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

_REASONS: Final = {
    100: b"Continue", 200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content",
    206: b"Partial Content", 301: b"Moved Permanently", 302: b"Found", 304: b"Not Modified",
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Content Too Large",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
    508: b"Loop Detected",
}  # fmt: skip


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


class Request:
    """One request on its way through the layers."""

    __slots__ = (
        "attempts",
        "authority",
        "body",
        "client_addr",
        "content_length",
        "deadline",
        "endpoint",
        "forwarded_for",
        "headers",
        "keep_alive",
        "method",
        "on_complete",
        "peer_identity",
        "received_at",
        "request_id",
        "scheme",
        "service",
        "target",
        "trace",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        *,
        authority: bytes = b"",
        body: Body | None = None,
        content_length: int | None = None,
        version: bytes = b"1.1",
        keep_alive: bool = True,
        client_addr: str = "",
        scheme: bytes = b"http",
        received_at: float = 0.0,
    ) -> None:
        self.method = method
        #: Origin-form target (path and query) as forwarded upstream.
        self.target = target
        self.headers = headers
        #: host[:port] the client addressed (absolute-form URI wins over Host).
        self.authority = authority
        #: None: no body. Otherwise the body, with `content_length` None meaning chunked.
        self.body = body
        self.content_length = content_length
        self.version = version
        self.keep_alive = keep_alive
        self.client_addr = client_addr
        self.scheme = scheme
        self.received_at = received_at
        self.forwarded_for: bytes | None = None
        #: The caller's verified SPIFFE ID when it came over mTLS, else "".
        self.peer_identity = ""
        self.request_id: bytes = b""
        #: Absolute loop time by which the whole exchange must finish (None: no deadline).
        self.deadline: float | None = None
        #: Logical destination (mesh service) once routed, and the endpoint once balanced.
        self.service: str = ""
        self.endpoint: Any = None
        self.attempts = 0
        #: Trace context of this request (`mesh.tracing.context.TraceContext`) when tracing.
        self.trace: Any = None
        #: Callbacks run once the response has been fully written or aborted.
        self.on_complete: list[Completion] | None = None
        #: A `mesh.tunnel.websocket.Upgrade` when the request asks for a WebSocket, else None.
        self.upgrade: Any = None

    @property
    def path(self) -> bytes:
        """The target without its query string."""
        return self.target.split(b"?", 1)[0]

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def add_completion(
        self, callback: Callable[[Request, Response | None, int, str], None]
    ) -> None:
        if self.on_complete is None:
            self.on_complete = [callback]
        else:
            self.on_complete.append(callback)

    def __repr__(self) -> str:
        return f"<Request {self.method.decode()} {self.authority.decode()}{self.target.decode()}>"


class Response:
    """A response head plus its body; `content_length` None with a body means "streamed"."""

    __slots__ = ("body", "content_length", "error_reason", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        headers: Headers,
        body: Body | None = None,
        content_length: int | None = None,
        reason: bytes = b"",
        error_reason: str = "",
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.content_length = content_length
        self.reason = reason or reason_phrase(status)
        #: Set when the proxy made this response itself (the `x-mesh-error` word).
        self.error_reason = error_reason

    @classmethod
    def local(cls, status: int, text: bytes, headers: Headers | None = None) -> Response:
        """A response made by the proxy with a small complete body."""
        return cls(status, headers or [], Body.complete(text), len(text))

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


#: `HeaderNames.lookup` kind for an ordinary end-to-end header.
END_TO_END: Final = -1


class HeaderNames:
    """Lower-case form and handling of each header-name spelling seen, remembered.

    Peers repeat the same few names on every message: one dict hit replaces a `lower()`
    (a new object per header), a second lookup and any per-name check. Bounded, so a
    client inventing names only falls back to computing them.
    """

    def __init__(self, special: dict[bytes, int], reject: int | None = None) -> None:
        self._special = special
        #: Kind given to names with an underscore (a smuggling vector), when set.
        self._reject = reject
        self._known: dict[bytes, tuple[bytes, int]] = {}

    def lookup(self, raw: bytes) -> tuple[bytes, int]:
        hit = self._known.get(raw)
        if hit is not None:
            return hit
        name = raw.lower()
        kind = self._special.get(name, END_TO_END)
        if kind == END_TO_END and self._reject is not None and b"_" in name:
            kind = self._reject
        entry = (name, kind)
        if len(self._known) < 4096:
            self._known[raw] = entry
        return entry


class NameMemo:
    """One connection's header names of its previous message, in order.

    Keep-alive peers send the same names in the same order on every message (browsers,
    client libraries, and sidecars above all). One bytes comparison with the name at the
    same position then replaces hashing the new name and a dict lookup in `HeaderNames`.
    """

    def __init__(self, names: HeaderNames) -> None:
        self._names = names
        self._raw: list[bytes] = []
        self._entries: list[tuple[bytes, int]] = []

    def lookup(self, index: int, raw: bytes) -> tuple[bytes, int]:
        """`HeaderNames.lookup` for the `index`-th header (from 0) of a message."""
        known = self._raw
        if index < len(known):
            if known[index] == raw:
                return self._entries[index]
            entry = self._names.lookup(raw)
            known[index] = raw
            self._entries[index] = entry
            return entry
        entry = self._names.lookup(raw)
        if index == len(known) and index < 64:
            known.append(raw)
            self._entries.append(entry)
        return entry


#: Per status code: the last reason phrase seen with it and the line made of both.
_STATUS_LINES: Final[dict[int, tuple[bytes, bytes]]] = {}


def status_line(status: int, reason: bytes) -> bytes:
    """`HTTP/1.1 <status> <reason>`, the first piece of a head (see `append_headers`),
    formatted once per status code while its reason phrase stays the same."""
    known = _STATUS_LINES.get(status)
    if known is not None and known[0] == reason:
        return known[1]
    line = b"HTTP/1.1 %d %s" % (status, reason)
    if known is not None or len(_STATUS_LINES) < 1024:
        _STATUS_LINES[status] = (reason, line)
    return line


def bodyless_status(status: int) -> bool:
    return status < 200 or status == 204 or status == 304


#: A head ends with the blank line after its last field.
END_OF_HEAD: Final = b"\r\n\r\n"

#: `\r\n<name>: ` per header name, made once (bounded).
_FIELD_STARTS: Final[dict[bytes, bytes]] = {}


def append_headers(parts: list[bytes], headers: Headers) -> None:
    """Add header fields to `parts`, to be joined once with the rest of the head.

    A head is joined from its first line (without CRLF), then each field as two pieces,
    `\\r\\n<name>: ` and the value, then END_OF_HEAD. The join costs per piece, and with
    the CRLF leading each field's start, a field is two pieces instead of four.
    """
    starts = _FIELD_STARTS
    for name, value in headers:
        start = starts.get(name)
        if start is None:
            start = b"\r\n" + name + b": "
            if len(starts) < 4096:
                starts[name] = start
        parts.append(start)
        parts.append(value)


class FormattedInts:
    """`fmt % n` for ints, each formatted once (up to 4096 of them): a message field that
    carries a number repeats the same few values."""

    def __init__(self, fmt: bytes) -> None:
        self._fmt = fmt
        self._known: dict[int, bytes] = {}

    def get(self, n: int) -> bytes:
        text = self._known.get(n)
        if text is None:
            text = self._fmt % n
            if len(self._known) < 4096:
                self._known[n] = text
        return text


#: The `content-length` field in `append_headers`'s form.
_LENGTH_FIELDS: Final = FormattedInts(b"\r\ncontent-length: %d")


def content_length_field(length: int) -> bytes:
    """The `content-length` field in `append_headers`'s form."""
    return _LENGTH_FIELDS.get(length)
