"""Header fields between HTTP/2 frames and the layers' `Request`/`Response`.

Inbound request headers are checked here rather than by `h2` (whose failures are connection
errors): a malformed request resets its own stream only, and never reaches an upstream
(RFC 9113 §8.2, §8.3; RELIABILITY row 10).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mesh.errors import BadRequest
from mesh.http1.message import Headers

#: Connection-specific fields (RFC 9113 §8.2.2): a request carrying one is malformed.
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
#: Never sent on an HTTP/2 message we write (framing is HTTP/2's own; `te` and `host` are
#: written by the client itself).
NOT_FORWARDED = CONNECTION_SPECIFIC | {b"content-length", b"te", b"host", b"trailer"}
#: Request fields the proxy owns (as on HTTP/1.1, see mesh/http1/server.py): a client's own
#: copy is removed.
SANITIZED = frozenset(
    {b"x-forwarded-proto", b"x-forwarded-client-cert", b"l5d-client-id", b"proxy-authorization"}
)
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
#: A field name: a lower-case token (RFC 9110 §5.1), or a pseudo-header's.
_NAME = re.compile(rb":?[a-z0-9!#$%&'*+\-.^_`|~]+")
#: What a value must not hold (RFC 9113 §8.2.1): CR, LF, NUL, or whitespace at either end.
_BAD_VALUE = re.compile(rb"[\r\n\x00]|^[ \t]|[ \t]$")


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    authority: bytes
    headers: Headers
    content_length: int | None
    forwarded_for: bytes | None
    request_id: bytes


def _check_field(name: bytes, value: bytes) -> None:
    if _NAME.fullmatch(name) is None:
        raise BadRequest("header name not a lower-case token")
    if _BAD_VALUE.search(value) is not None:
        raise BadRequest("CR, LF or NUL in a header value, or whitespace around it")


def request_head(fields: list[tuple[bytes, bytes]], max_headers: int) -> RequestHead:
    """The request's fields, checked; BadRequest names what is malformed."""
    pseudo: dict[bytes, bytes] = {}
    headers: Headers = []
    content_length: int | None = None
    host: bytes | None = None
    xff: bytes | None = None
    request_id = b""
    regular_seen = False
    if len(fields) > max_headers + 4:
        raise BadRequest(f"more than {max_headers} headers")
    for name, value in fields:
        _check_field(name, value)
        if name[:1] == b":":
            if regular_seen:
                raise BadRequest("pseudo-header after a regular header")
            if name not in _REQUEST_PSEUDO or name in pseudo:
                raise BadRequest(f"unknown or repeated pseudo-header {name.decode()}")
            pseudo[name] = value
            continue
        regular_seen = True
        if name in CONNECTION_SPECIFIC:
            raise BadRequest(f"connection-specific header {name.decode()} in HTTP/2")
        if name == b"te":
            if value != b"trailers":
                raise BadRequest("te other than 'trailers' in HTTP/2")
        elif name == b"content-length":
            if not value.isdigit() or (content_length is not None and int(value) != content_length):
                raise BadRequest("malformed content-length")
            content_length = int(value)
        elif name == b"host":
            host = value
        elif name == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
        elif name in SANITIZED:
            pass
        else:
            if name == b"x-request-id":
                request_id = value
            headers.append((name, value))
    method = pseudo.get(b":method")
    if not method:
        raise BadRequest("missing :method")
    if method == b"CONNECT":
        raise BadRequest("CONNECT is not carried over HTTP/2")
    target = pseudo.get(b":path", b"")
    if not target or b":scheme" not in pseudo:
        raise BadRequest("missing :path or :scheme")
    if target[:1] != b"/" and not (target == b"*" and method == b"OPTIONS"):
        raise BadRequest(":path is not origin-form")
    authority = pseudo.get(b":authority", host or b"")
    return RequestHead(method, target, authority, headers, content_length, xff, request_id)


def trailer_fields(fields: list[tuple[bytes, bytes]]) -> Headers:
    """Trailers as forwarded: no pseudo-headers, no framing fields."""
    return [(n, v) for n, v in fields if n[:1] != b":" and n not in NOT_FORWARDED]


def response_fields(
    status: int, headers: Headers, content_length: int | None
) -> list[tuple[bytes, bytes]]:
    fields = [(b":status", b"%d" % status)]
    fields.extend((n, v) for n, v in headers if n not in NOT_FORWARDED)
    if content_length is not None and status >= 200 and status not in (204, 304):
        fields.append((b"content-length", b"%d" % content_length))
    return fields


def message_fields(fields: list[tuple[bytes, bytes]]) -> tuple[Headers, int | None]:
    """A received response's end-to-end headers and its content-length, if any."""
    headers: Headers = []
    length: int | None = None
    for name, value in fields:
        if name[:1] == b":" or name in NOT_FORWARDED:
            if name == b"content-length" and value.isdigit():
                length = int(value)
            continue
        headers.append((name, value))
    return headers, length
