"""From span records to exported spans, on the export thread only.

`attributes` applies the stable HTTP semantic conventions; `OtlpExport` builds SDK
`ReadableSpan`s and hands them to the OpenTelemetry OTLP exporter (HTTP/protobuf with gzip,
or gRPC), so the wire format, retries and headers are the SDK's; `FileExport` writes one JSON
object per span to a local file, rotated at a size bound, for `mesh traces`.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mesh.grpc.status import name as status_name
from mesh.tracing.recorder import CLIENT, SERVER, SpanRecord

log = logging.getLogger("mesh.tracing")

SCOPE_NAME = "pymesh.sidecar"


def _host_port(authority: str, default_port: int) -> tuple[str, int]:
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port = rest[1:]
    else:
        host, _, port = authority.partition(":")
    return host, int(port) if port.isdigit() else default_port


def is_error(kind: str, status: int, error: str, grpc: int = -1) -> bool:
    """Proxy-made answers are errors on both sides; otherwise 5xx, and 4xx on a client.
    A gRPC call (`grpc` >= 0, its status code) by its code: any but OK on a client, the
    server-fault codes on a server (OpenTelemetry's gRPC conventions)."""
    if grpc >= 0:
        return bool(error) or grpc in (_GRPC_SERVER_ERRORS if kind == SERVER else _GRPC_NOT_OK)
    return bool(error) or status >= 500 or (kind == CLIENT and status >= 400) or status == 0


def _status_text(status: int, grpc: int) -> str:
    if grpc >= 0:
        return status_name(grpc)
    return f"HTTP {status}" if status else "incomplete"


_GRPC_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})  # UNKNOWN ... DATA_LOSS
_GRPC_NOT_OK = frozenset(range(1, 17))


def span_name(record: SpanRecord) -> str:
    return record[6].decode("latin-1")  # `{method}`: the mesh knows no route template


def attributes(record: SpanRecord) -> dict[str, Any]:
    kind, method, target, authority = record[0], record[6], record[7], record[8]
    status, error, peer, resend, scheme = record[9], record[10], record[11], record[12], record[13]
    text_scheme = scheme.decode("latin-1")
    default_port = 443 if text_scheme == "https" else 80
    attrs: dict[str, Any] = {"http.request.method": method.decode("latin-1")}
    if status:
        attrs["http.response.status_code"] = status
    host, port = _host_port(authority.decode("latin-1"), default_port)
    if kind == SERVER:
        path = target.split(b"?", 1)[0]
        attrs["url.path"] = path.decode("latin-1")
        attrs["url.scheme"] = text_scheme
        if host:
            attrs["server.address"] = host
            attrs["server.port"] = port
        if peer:
            attrs["client.address"] = peer
            attrs["network.peer.address"] = peer
    else:
        # The mesh service is the logical server; the endpoint dialled is the network peer.
        service = record[15]
        where = service or authority.decode("latin-1")
        attrs["url.full"] = f"{text_scheme}://{where}{target.decode('latin-1')}"
        peer_host, peer_port = _host_port(peer, 0)
        if service:
            # Addressed by the mesh service's name; the port is the endpoint's.
            attrs["server.address"] = service
            attrs["server.port"] = peer_port or port
            attrs["mesh.service"] = service
        elif host:
            attrs["server.address"] = host
            attrs["server.port"] = port
        if peer_host:
            attrs["network.peer.address"] = peer_host
            if peer_port:
                attrs["network.peer.port"] = peer_port
        if resend:
            attrs["http.request.resend_count"] = resend
    grpc = record[16]
    if grpc >= 0:
        attrs["rpc.system"] = "grpc"
        attrs["rpc.grpc.status_code"] = grpc
    if is_error(kind, status, error, grpc):
        attrs["error.type"] = error or (
            status_name(grpc) if grpc >= 0 else str(status) if status else "incomplete"
        )
    if error:
        attrs["mesh.error"] = error
    return attrs


def record_json(record: SpanRecord, service: str) -> dict[str, Any]:
    kind, status, error = record[0], record[9], record[10]
    return {
        "trace_id": record[1].decode(),
        "span_id": record[2].decode(),
        "parent_id": record[3].decode() or None,
        "service": service,
        "kind": kind,
        "name": span_name(record),
        "start_ns": record[4],
        "end_ns": record[5],
        "status": "error" if is_error(kind, status, error, record[16]) else "ok",
        "error": error or None,
        "attributes": attributes(record),
    }


class FileExport:
    """JSON lines, appended; at `max_bytes` the file becomes `<name>.1` (one generation kept)."""

    def __init__(self, path: Path, service: str, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.path = path
        self.service = service
        self.max_bytes = max_bytes

    def export(self, records: Sequence[SpanRecord]) -> bool:
        lines = "".join(
            json.dumps(record_json(r, self.service), separators=(",", ":")) + "\n" for r in records
        ).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.path.stat().st_size + len(lines) > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        except FileNotFoundError:
            pass
        # O_APPEND: one write per batch, so lines of concurrent writers never interleave.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, lines)
        finally:
            os.close(fd)
        return True

    def shutdown(self) -> None:
        pass


class OtlpHttpExport:
    """OTLP over HTTP/protobuf, gzip: the protobuf written straight from the records
    (`otlp_wire`, several times cheaper than the SDK's encoder; bench/tracing.py measures
    both), POSTed with httpcore (the sidecar's own HTTP client) and a short timeout. A failed
    batch is dropped (counted by the queue): retrying it would only hold newer spans back
    while the collector is unwell."""

    def __init__(
        self, endpoint: str, headers: Mapping[str, str], timeout: float, resource: Mapping[str, str]
    ) -> None:
        import httpcore

        from mesh.tracing.otlp_wire import Encoder

        self.endpoint = endpoint
        self.encoder = Encoder(resource, SCOPE_NAME)
        self.pool = httpcore.ConnectionPool(max_connections=1)
        self.headers = [
            *headers.items(),
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "gzip"),
            ("User-Agent", "pymesh-sidecar"),
        ]
        self.extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }
        self._errors: tuple[type[Exception], ...] = (
            httpcore.NetworkError,
            httpcore.TimeoutException,
            httpcore.ProtocolError,
            httpcore.UnsupportedProtocol,
            OSError,
        )

    def encode(self, records: Sequence[SpanRecord]) -> bytes:
        encoder = self.encoder
        return encoder.request([encoder.span(r, span_name(r), attributes(r)) for r in records])

    def export(self, records: Sequence[SpanRecord]) -> bool:
        body = gzip.compress(self.encode(records), compresslevel=1)
        try:
            reply = self.pool.request(
                "POST",
                self.endpoint,
                headers=self.headers,
                content=body,
                extensions=self.extensions,
            )
        except self._errors as exc:  # refused, timed out, reset, not HTTP
            log.debug("span export to %s failed: %r", self.endpoint, exc)
            return False
        if not 200 <= reply.status < 300:
            log.debug("span export to %s: HTTP %d", self.endpoint, reply.status)
            return False
        return True

    def shutdown(self) -> None:
        self.pool.close()


class OtlpExport:
    """Records become SDK `ReadableSpan`s, exported by OpenTelemetry's OTLP exporter
    (the gRPC route, and the reference the direct encoder is measured against)."""

    def __init__(
        self,
        endpoint: str,
        protocol: str,
        headers: Mapping[str, str],
        timeout: float,
        resource: Mapping[str, str],
    ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.resource = Resource.create(dict(resource))
        self.scope = InstrumentationScope(SCOPE_NAME)
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            self.exporter: Any = GrpcExporter(
                endpoint=endpoint, headers=dict(headers), timeout=timeout, insecure=True
            )
        else:
            from opentelemetry.exporter.otlp.proto.http import Compression
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            self.exporter = HttpExporter(
                endpoint=endpoint,
                headers=dict(headers),
                timeout=timeout,
                compression=Compression.Gzip,
            )

    def spans(self, records: Sequence[SpanRecord]) -> list[Any]:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
        from opentelemetry.trace.span import TraceState

        sampled = TraceFlags(TraceFlags.SAMPLED)
        out = []
        for record in records:
            kind, trace_hex, span_hex, parent_hex = record[0], record[1], record[2], record[3]
            trace_id = int(trace_hex, 16)
            state = TraceState.from_header([record[14].decode()]) if record[14] else None
            context = SpanContext(trace_id, int(span_hex, 16), False, sampled, state)
            parent = (
                SpanContext(trace_id, int(parent_hex, 16), True, sampled) if parent_hex else None
            )
            status, error = record[9], record[10]
            span_status = (
                Status(StatusCode.ERROR, error or _status_text(status, record[16]))
                if is_error(kind, status, error, record[16])
                else Status(StatusCode.UNSET)
            )
            out.append(
                ReadableSpan(
                    span_name(record),
                    context=context,
                    parent=parent,
                    resource=self.resource,
                    attributes=attributes(record),
                    kind=SpanKind.SERVER if kind == SERVER else SpanKind.CLIENT,
                    status=span_status,
                    start_time=record[4],
                    end_time=record[5],
                    instrumentation_scope=self.scope,
                )
            )
        return out

    def export(self, records: Sequence[SpanRecord]) -> bool:
        from opentelemetry.sdk.trace.export import SpanExportResult

        result = self.exporter.export(self.spans(records))
        return bool(result == SpanExportResult.SUCCESS)

    def shutdown(self) -> None:
        self.exporter.shutdown()
