"""A request's trace context, and the cheap ids it needs.

Ids are kept as lower-case hex bytes, the form every propagation format writes, so the
request path never converts between ints and text more than once.
"""

from __future__ import annotations

import os
import random
from typing import Final

#: A per-process generator seeded from the OS: ids must be unique, not secret, and
#: `getrandbits` plus one `%x` costs a fraction of `os.urandom(...).hex()`.
_random = random.Random(os.urandom(16))
_bits = _random.getrandbits


_LOW64: Final = (1 << 64) - 1


def new_trace_id() -> tuple[bytes, int]:
    """A random 128-bit trace id as hex, with its low 64 bits (what ratio sampling reads)."""
    value = _bits(128) or 1
    return b"%032x" % value, value & _LOW64


def new_span_id() -> bytes:
    return b"%016x" % (_bits(64) or 1)


class TraceContext:
    """What one request carries through this sidecar's layers.

    `parent_id` is the caller's span (empty for a new trace); `span_id` is this sidecar's
    current span: the SERVER span inbound, the latest attempt's CLIENT span outbound (or,
    unsampled, the id passed on unchanged).
    """

    __slots__ = (
        "attempt_parent",
        "attempts",
        "baggage",
        "inbound",
        "kept",
        "last_error",
        "parent_id",
        "recorded",
        "sampled",
        "span_id",
        "start_ns",
        "trace_id",
        "tracestate",
    )

    def __init__(
        self,
        trace_id: bytes,
        parent_id: bytes,
        sampled: bool,
        tracestate: bytes = b"",
        baggage: bytes = b"",
    ) -> None:
        self.trace_id = trace_id
        self.parent_id = parent_id
        self.span_id = parent_id
        self.sampled = sampled
        self.tracestate = tracestate
        self.baggage = baggage
        self.inbound = False
        #: The request's own trace headers already say what would be written: keep them.
        self.kept = False
        self.start_ns = 0
        #: CLIENT attempts made (outbound), and whether any span was recorded for them.
        self.attempts = 0
        self.recorded = False
        #: The reason the latest recorded attempt failed with ("" when it got a response).
        self.last_error = ""
        #: The parent of this sidecar's CLIENT attempt spans: the caller's span on the
        #: outbound edge, this sidecar's SERVER span behind an inbound edge (the gateway).
        self.attempt_parent = parent_id

    def __repr__(self) -> str:
        return (
            f"<TraceContext {self.trace_id.decode()} span={self.span_id.decode()} "
            f"parent={self.parent_id.decode() or '-'} sampled={self.sampled}>"
        )
