"""Recognising gRPC on the wire, reading its status, and the proxy's own gRPC answers.

A gRPC call is an HTTP/2 request whose `content-type` starts with `application/grpc`. Its
status is the `grpc-status` of the trailers, or of the response head when the server
answered "trailers-only" (a failure before any message). A proxy-made failure is always
trailers-only: HTTP 200, `grpc-status`, a percent-encoded `grpc-message`, and
`x-mesh-error`, no body; a gRPC client reads that as the call's status.
"""

from __future__ import annotations

from collections.abc import Iterable

from mesh.grpc.status import StatusCode, code_for_http_status
from mesh.http1.body import Body
from mesh.http1.message import Headers, Request, Response

CONTENT_TYPE = b"application/grpc"
STATUS = b"grpc-status"
MESSAGE = b"grpc-message"

#: Bytes a `grpc-message` carries as they are: printable ASCII except `%`.
_PLAIN = frozenset(range(0x20, 0x7F)) - {ord("%")}
#: Longest `grpc-message` written: one line of detail, not a log.
_MAX_MESSAGE = 1024


def is_grpc(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value[:16].lower() == CONTENT_TYPE
    return False


def is_grpc_request(request: Request) -> bool:
    return is_grpc(request.headers)


def parse_status(value: bytes) -> int:
    """A `grpc-status` value; anything but a small decimal number is UNKNOWN."""
    value = value.strip()
    if value.isdigit() and len(value) <= 3:
        return int(value)
    return StatusCode.UNKNOWN


def status_in(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == STATUS:
            return parse_status(value)
    return None


def head_status(response: Response) -> int | None:
    """The status a gRPC client will see, when the response head alone decides it.

    Trailers-only (grpc-status in the head): that status. An answer that is not gRPC
    (another content-type, or not a 200): the HTTP mapping. None when the status is still
    to come in the trailers.
    """
    headers = response.headers
    if response.status != 200 or not is_grpc(headers):
        return code_for_http_status(response.status)
    return status_in(headers)


def trailer_status(body: Body | None) -> int:
    """The status from a finished body's trailers. A body its reader gave up on (the client
    cancelled) is CANCELLED; one that broke, or ended without a `grpc-status`, is UNKNOWN:
    the server never said how the call went."""
    if body is None:
        return StatusCode.UNKNOWN
    if body.failed:
        # `Body.abandon` fails the body with ConnectionAbortedError; a producer, with its own.
        abandoned = isinstance(getattr(body, "_error", None), ConnectionAbortedError)
        return StatusCode.CANCELLED if abandoned else StatusCode.UNKNOWN
    trailers: Headers | None = getattr(body, "trailers", None)
    found = status_in(trailers) if trailers else None
    return StatusCode.UNKNOWN if found is None else found


def encode_message(text: str) -> bytes:
    """Percent-encode a `grpc-message` (grpc/doc/PROTOCOL-HTTP2.md: UTF-8, then every byte
    outside printable ASCII, and `%` itself, as %XX)."""
    raw = text.encode("utf-8", "replace")[:_MAX_MESSAGE]
    if all(b in _PLAIN for b in raw):
        return raw
    return b"".join(bytes((b,)) if b in _PLAIN else b"%%%02X" % b for b in raw)


def decode_message(value: bytes) -> str:
    """The text of a `grpc-message` (for tests and logs); bad escapes are kept as they are."""
    out = bytearray()
    i = 0
    while i < len(value):
        if value[i] == ord("%") and _hex(value[i + 1 : i + 3]):
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(value[i])
            i += 1
    return out.decode("utf-8", "replace")


def _hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


def trailers_only(code: int, message: str, headers: Headers) -> Response:
    """A complete gRPC answer in one head: HTTP 200 and the status, no body."""
    head: Headers = [
        (b"content-type", CONTENT_TYPE),
        (STATUS, b"%d" % code),
        (MESSAGE, encode_message(message)),
        *headers,
    ]
    return Response(200, head, None, 0)
