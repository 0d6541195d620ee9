"""The `grpc-timeout` request header: `TimeoutValue TimeoutUnit`, at most 8 digits and one of
H M S m u n (grpc/doc/PROTOCOL-HTTP2.md). The proxy reads it to bound its own hop and writes
back the time left, so each hop downstream sees less."""

from __future__ import annotations

from mesh.errors import BadRequest

HEADER = b"grpc-timeout"

#: Seconds per unit.
UNITS: dict[int, float] = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}
#: Finest unit first: the value written is as exact as 8 digits allow.
_WRITE_ORDER = (
    (b"n", 1e9),
    (b"u", 1e6),
    (b"m", 1e3),
    (b"S", 1.0),
    (b"M", 1 / 60),
    (b"H", 1 / 3600),
)
_MAX_DIGITS = 8
_MAX_VALUE = 10**_MAX_DIGITS - 1


def parse(value: bytes) -> float:
    """Seconds from a header value; `BadRequest` (INTERNAL to a gRPC client) when malformed."""
    digits, unit = value[:-1], value[-1:]
    if (
        not digits
        or len(digits) > _MAX_DIGITS
        or not digits.isdigit()
        or not unit
        or unit[0] not in UNITS
    ):
        raise BadRequest(f"invalid grpc-timeout {value[:32]!r}")
    return int(digits) * UNITS[unit[0]]


def format_seconds(seconds: float) -> bytes:
    """A header value for `seconds` (at least 1n: a hop with no time left is not
    forwarded at all; rounding never hands the next hop more time than there is)."""
    if seconds <= 0:
        return b"1n"
    for unit, per_second in _WRITE_ORDER:
        count = int(seconds * per_second)
        if count <= _MAX_VALUE:
            return b"%d%s" % (max(count, 1), unit)
    return b"%dH" % _MAX_VALUE


def find(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == HEADER:
            return value
    return None


def replace(headers: list[tuple[bytes, bytes]], value: bytes) -> None:
    """Set the header in place (one value: duplicates dropped)."""
    headers[:] = [(n, v) for n, v in headers if n != HEADER]
    headers.append((HEADER, value))
