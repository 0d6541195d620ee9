"""OTLP trace protobuf written directly from span records (`ExportTraceServiceRequest`).

The SDK route (a `ReadableSpan` per span, then `encode_spans`, which builds one generated
message object per span, attribute and value) costs about 50 us per span here; writing the
few fields a proxy span has straight into protobuf's wire format costs a fraction of that,
and repeated key/value pairs (method, status, addresses) are encoded once and reused. The
tests decode the result with opentelemetry-proto. Field numbers are from
opentelemetry/proto/trace/v1/trace.proto and common/v1/common.proto.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from mesh.tracing.recorder import SERVER, SpanRecord

_KIND_SERVER, _KIND_CLIENT = 2, 3  # Span.SpanKind
_STATUS_ERROR = 2  # Status.StatusCode
_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_FLAGS_ROOT = b"\x85\x01" + struct.pack("<I", 0x100)
_FLAGS_REMOTE_PARENT = b"\x85\x01" + struct.pack("<I", 0x300)


def varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes([i]) for i in range(0x80)]


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: `tag` is (field number << 3) | 2."""
    return _SMALL[tag] + varint(len(payload)) + payload


def any_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    return _field(0x0A, str(value).encode())


def key_value(key: str, value: Any) -> bytes:
    return _field(0x0A, key.encode()) + _field(0x12, any_value(value))


class Encoder:
    """Encodes batches for one resource (this sidecar) and scope."""

    def __init__(self, resource: Mapping[str, str], scope: str) -> None:
        attrs = b"".join(_field(0x0A, key_value(k, v)) for k, v in resource.items())
        self._resource = _field(0x0A, attrs)  # ResourceSpans.resource
        self._scope = _field(0x0A, _field(0x0A, scope.encode()))  # ScopeSpans.scope
        self._pairs: dict[tuple[str, Any], bytes] = {}

    def _attribute(self, key: str, value: Any) -> bytes:
        """One `Span.attributes` entry; frequent pairs come from a bounded cache."""
        pair = (key, value)
        encoded = self._pairs.get(pair)
        if encoded is None:
            encoded = _field(0x4A, key_value(key, value))
            if len(self._pairs) < 4096:
                self._pairs[pair] = encoded
        return encoded

    def span(self, record: SpanRecord, name: str, attributes: Mapping[str, Any]) -> bytes:
        kind, trace_id, span_id, parent_id = record[0], record[1], record[2], record[3]
        parts = [
            b"\x0a\x10",
            bytes.fromhex(trace_id.decode()),
            b"\x12\x08",
            bytes.fromhex(span_id.decode()),
        ]
        if record[14]:
            parts.append(_field(0x1A, record[14]))  # trace_state
        if parent_id:
            parts += (b"\x22\x08", bytes.fromhex(parent_id.decode()))
        parts += (
            _field(0x2A, name.encode()),
            b"\x30",
            _SMALL[_KIND_SERVER if kind == SERVER else _KIND_CLIENT],
            b"\x39",
            _FIXED64(record[4]),
            b"\x41",
            _FIXED64(record[5]),
        )
        attribute = self._attribute
        for key, value in attributes.items():
            parts.append(attribute(key, value))
        error = attributes.get("error.type")
        if error is not None:
            if record[16] >= 0:  # a gRPC call: its status code's name
                message = record[10] or str(error)
            else:
                message = record[10] or (f"HTTP {record[9]}" if record[9] else "incomplete")
            status = _field(0x12, message.encode())
            parts.append(_field(0x7A, status + b"\x18" + _SMALL[_STATUS_ERROR]))
        else:
            parts.append(b"\x7a\x00")  # an empty (unset) status, as the SDK writes it
        # flags (fixed32): whether the parent is remote is known (0x100), and it is (0x200).
        parts.append(_FLAGS_REMOTE_PARENT if parent_id else _FLAGS_ROOT)
        return _field(0x12, b"".join(parts))  # ScopeSpans.spans

    def request(self, spans: Sequence[bytes]) -> bytes:
        scope_spans = _field(0x12, self._scope + b"".join(spans))
        return _field(0x0A, self._resource + scope_spans)
