"""Reading and writing trace context headers: W3C Trace Context + Baggage, B3 single/multi.

Parsing is by hand and strict, because it runs on every request: a value that is not
exactly right (wrong length, upper-case hex, all-zero ids, version ff, a tracestate over
512 bytes or 32 members) is ignored as a whole and the request starts a new trace; the
request itself is never refused for its trace headers. Accepted on the way in: any of the
formats (traceparent wins, then `b3`, then `x-b3-*`). Written on the way out: the configured
ones. Every trace header the caller sent is removed first, so only one consistent context
leaves the proxy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from mesh.tracing.context import TraceContext

Headers = list[tuple[bytes, bytes]]

TRACECONTEXT: Final = "tracecontext"
BAGGAGE: Final = "baggage"
B3: Final = "b3"
B3MULTI: Final = "b3multi"
FORMATS: Final = (TRACECONTEXT, BAGGAGE, B3, B3MULTI)
W3C_FORMATS: Final = (TRACECONTEXT, BAGGAGE)

TRACE_HEADERS: Final = frozenset(
    {
        b"traceparent",
        b"tracestate",
        b"baggage",
        b"b3",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-parentspanid",
        b"x-b3-sampled",
        b"x-b3-flags",
    }
)

#: W3C: vendors must propagate at least 512 bytes of tracestate, in at most 32 members.
MAX_TRACESTATE: Final = 512
MAX_TRACESTATE_MEMBERS: Final = 32
#: W3C Baggage limits; a larger baggage is dropped (the trace is kept).
MAX_BAGGAGE: Final = 8192
MAX_BAGGAGE_MEMBERS: Final = 180
#: Longer values are not even looked at (a future traceparent version may grow a little).
MAX_TRACEPARENT: Final = 256

_HEX_AND_DASH: Final = b"0123456789abcdef-"
_ODD_HEX: Final = frozenset(b"13579bdf")
_HEX16: Final = re.compile(rb"[0-9a-f]{16}")
_HEX32: Final = re.compile(rb"[0-9a-f]{32}")
_ZERO_TRACE: Final = b"0" * 32
_ZERO_SPAN: Final = b"0" * 16

#: The sampling decision a context arrived with: sampled, not sampled, or left to us.
DEFERRED: Final = -1


class Incoming:
    """The context found in a request's headers, before this sidecar's sampling decision."""

    __slots__ = ("baggage", "sampled", "span_id", "trace_id", "tracestate")

    def __init__(
        self, trace_id: bytes, span_id: bytes, sampled: int, tracestate: bytes = b""
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.tracestate = tracestate
        self.baggage = b""


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bool] | None:
    """(trace id, parent span id, sampled) of a valid traceparent, else None.

    By hand rather than with a regex (a third of the cost): the first 55 bytes must be
    lower-case hex and three dashes in their places; a longer value is a future version.
    """
    size = len(value)
    if size != 55:
        if size < 55 or size > MAX_TRACEPARENT or value[55] != 0x2D or value[:2] == b"00":
            return None
        value = value[:55]
    if (
        value[2] != 0x2D
        or value[35] != 0x2D
        or value[52] != 0x2D
        or value.translate(None, _HEX_AND_DASH)
        or value.count(b"-") != 3
        or value[:2] == b"ff"
    ):
        return None
    trace_id, span_id = value[3:35], value[36:52]
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, value[54] in _ODD_HEX  # flags bit 0: sampled


def valid_tracestate(value: bytes) -> bool:
    if len(value) > MAX_TRACESTATE:
        return False
    members = [m for m in value.split(b",") if m.strip(b" \t")]
    return len(members) <= MAX_TRACESTATE_MEMBERS and all(b"=" in m for m in members)


def _b3_sampled(value: bytes | None) -> int:
    if value is None:
        return DEFERRED
    value = value.strip().lower()
    if value in (b"1", b"true", b"d"):
        return 1
    if value in (b"0", b"false"):
        return 0
    return DEFERRED


def _b3_trace_id(value: bytes) -> bytes | None:
    value = value.strip()
    if len(value) == 16 and _HEX16.fullmatch(value):
        value = b"0" * 16 + value  # 64-bit B3 ids widen to 128 bits (left-padded)
    elif len(value) != 32 or not _HEX32.fullmatch(value):
        return None
    return None if value == _ZERO_TRACE else value


def _b3_span_id(value: bytes) -> bytes | None:
    value = value.strip()
    if len(value) != 16 or not _HEX16.fullmatch(value) or value == _ZERO_SPAN:
        return None
    return value


def parse_b3_single(value: bytes) -> Incoming | None:
    """`b3: {trace}-{span}[-{sampled}[-{parent}]]`, or a bare decision `0`/`1`/`d`."""
    if len(value) > MAX_TRACEPARENT:
        return None
    parts = value.strip().split(b"-")
    if len(parts) == 1:
        sampled = _b3_sampled(parts[0])
        return None if sampled == DEFERRED else Incoming(b"", b"", sampled)
    if len(parts) > 4:
        return None
    trace_id, span_id = _b3_trace_id(parts[0]), _b3_span_id(parts[1])
    if trace_id is None or span_id is None:
        return None
    sampled = DEFERRED
    if len(parts) >= 3:
        sampled = _b3_sampled(parts[2])
        if sampled == DEFERRED:
            return None
    if len(parts) == 4 and _b3_span_id(parts[3]) is None:
        return None
    return Incoming(trace_id, span_id, sampled)


def parse_b3_multi(found: dict[bytes, bytes]) -> Incoming | None:
    raw_trace, raw_span = found.get(b"x-b3-traceid"), found.get(b"x-b3-spanid")
    if raw_trace is None or raw_span is None:
        return None
    trace_id, span_id = _b3_trace_id(raw_trace), _b3_span_id(raw_span)
    if trace_id is None or span_id is None:
        return None
    sampled = _b3_sampled(found.get(b"x-b3-sampled"))
    if found.get(b"x-b3-flags", b"").strip() == b"1":
        sampled = 1  # debug implies sampled
    return Incoming(trace_id, span_id, sampled)


#: What `extract` found besides the context: which trace headers the request carries.
NO_TRACE_HEADERS: Final = 0
LONE_TRACEPARENT: Final = 1
OTHER_TRACE_HEADERS: Final = 2


def extract(headers: Headers) -> tuple[Incoming | None, int]:
    """The incoming context (None when absent or invalid), and which trace headers were
    present (`without_trace_headers` removes them; a lone traceparent that already says
    what this sidecar would write may stay)."""
    traceparent: bytes | None = None
    found: dict[bytes, bytes] | None = None
    for name, value in headers:
        if name in TRACE_HEADERS:
            if name == b"traceparent" and traceparent is None:
                traceparent = value
                continue
            if found is None:
                found = {}
            if name in found and name in (b"tracestate", b"baggage"):
                found[name] += b"," + value  # list-valued: several lines join
            elif name not in found:
                found[name] = value
    if found is None:
        if traceparent is None:
            return None, NO_TRACE_HEADERS
        parsed = parse_traceparent(traceparent)
        if parsed is None:
            return None, LONE_TRACEPARENT
        return Incoming(parsed[0], parsed[1], int(parsed[2])), LONE_TRACEPARENT
    incoming: Incoming | None = None
    if traceparent is not None:
        parsed = parse_traceparent(traceparent)
        tracestate = found.get(b"tracestate", b"")
        if parsed is not None and (not tracestate or valid_tracestate(tracestate)):
            incoming = Incoming(parsed[0], parsed[1], int(parsed[2]), tracestate)
        # An invalid traceparent is not rescued by B3: the caller meant W3C.
    elif b"b3" in found:
        incoming = parse_b3_single(found[b"b3"])
    elif b"x-b3-traceid" in found:
        incoming = parse_b3_multi(found)
    baggage = found.get(b"baggage")
    if (
        incoming is not None
        and baggage is not None
        and len(baggage) <= MAX_BAGGAGE
        and baggage.count(b",") < MAX_BAGGAGE_MEMBERS
    ):
        incoming.baggage = baggage
    return incoming, OTHER_TRACE_HEADERS


def inject(headers: Headers, context: TraceContext, formats: Sequence[str]) -> None:
    """Append the context's headers in each configured format; `span_id` is the parent
    the next hop will see."""
    trace_id, span_id, sampled = context.trace_id, context.span_id, context.sampled
    if formats == W3C_FORMATS and not context.tracestate and not context.baggage:
        # The common case in one append: W3C only, nothing but the traceparent to pass on.
        headers.append(
            (b"traceparent", b"00-%s-%s-%s" % (trace_id, span_id, b"01" if sampled else b"00"))
        )
        return
    for fmt in formats:
        if fmt == TRACECONTEXT:
            headers.append(
                (b"traceparent", b"00-%s-%s-%s" % (trace_id, span_id, b"01" if sampled else b"00"))
            )
            if context.tracestate:
                headers.append((b"tracestate", context.tracestate))
        elif fmt == B3:
            headers.append((b"b3", b"%s-%s-%s" % (trace_id, span_id, b"1" if sampled else b"0")))
        elif fmt == B3MULTI:
            headers += (
                (b"x-b3-traceid", trace_id),
                (b"x-b3-spanid", span_id),
                (b"x-b3-sampled", b"1" if sampled else b"0"),
            )
        elif fmt == BAGGAGE and context.baggage:
            headers.append((b"baggage", context.baggage))


def without_trace_headers(headers: Headers) -> Headers:
    return [h for h in headers if h[0] not in TRACE_HEADERS]
