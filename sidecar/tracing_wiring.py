"""Builds a sidecar's tracer from its `tracing:` config and the OTEL_* environment, and the
tracing layers `sidecar.stacks` puts in each stack.

Config keys win; the standard OpenTelemetry variables fill what they leave unset:
OTEL_SDK_DISABLED, OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, OTEL_EXPORTER_OTLP_(TRACES_)HEADERS,
OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL, OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG,
OTEL_PROPAGATORS, OTEL_RESOURCE_ATTRIBUTES.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mesh.layers.trace_attempt import TraceAttempt
from mesh.layers.trace_outbound import TraceOutbound
from mesh.layers.trace_server import TraceServer
from mesh.stack import LayerFactory
from mesh.tracing.export import FileExport, OtlpExport, OtlpHttpExport
from mesh.tracing.masking import LogFields
from mesh.tracing.propagation import FORMATS
from mesh.tracing.recorder import Exporter, SpanQueue
from mesh.tracing.sampling import SAMPLERS, Sampler
from mesh.tracing.tracer import Tracer
from sidecar.config import SidecarConfig

log = logging.getLogger("sidecar.tracing")

SWITCH_INTERVAL = 0.001
DEFAULT_SPAN_DIR = Path(tempfile.gettempdir()) / "mesh-spans"


@dataclass(frozen=True)
class TracingSettings:
    """The effective tracing settings (config, then environment, then defaults)."""

    enabled: bool
    service: str
    endpoint: str | None = None
    protocol: str = "http/protobuf"
    headers: Mapping[str, str] = field(default_factory=dict)
    sampler: Sampler = field(default_factory=Sampler)
    propagators: tuple[str, ...] = ("tracecontext", "baggage")
    resource: Mapping[str, str] = field(default_factory=dict)
    span_file: Path | None = None


def _pairs(text: str) -> dict[str, str]:
    """`k=v,k2=v2` with percent-encoding, as OTEL_*_HEADERS and OTEL_RESOURCE_ATTRIBUTES."""
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return out


def _traces_url(endpoint: str, protocol: str) -> str:
    if protocol == "grpc":
        return endpoint
    parsed = urllib.parse.urlsplit(endpoint)
    return endpoint if parsed.path not in ("", "/") else endpoint.rstrip("/") + "/v1/traces"


def settings(config: SidecarConfig, environ: Mapping[str, str] | None = None) -> TracingSettings:
    env = os.environ if environ is None else environ
    cfg = config.tracing
    endpoint = cfg.endpoint
    # OTEL_TRACES_EXPORTER: `otlp` and `none` as the SDK reads them; `file` (this project's
    # own value) turns tracing on with the local span file.
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if endpoint is None and exporter != "file":
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None
        if endpoint is None and env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            endpoint = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    protocol = cfg.protocol or (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol not in ("http/protobuf", "grpc"):
        log.warning("OTLP protocol %r is not supported; using http/protobuf", protocol)
        protocol = "http/protobuf"
    if endpoint is None and exporter == "otlp":  # the SDK's default collector address
        endpoint = "http://localhost:4317" if protocol == "grpc" else "http://localhost:4318"
    enabled = cfg.enabled
    if enabled is None:
        off = env.get("OTEL_SDK_DISABLED", "").lower() == "true" or exporter == "none"
        enabled = not off and (endpoint is not None or exporter == "file")
    headers = {k: v.get_secret_value() for k, v in cfg.headers.items()} or _pairs(
        env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS", "")
    )
    sampler_name = cfg.sampler or env.get("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    if sampler_name not in SAMPLERS:
        log.warning("sampler %r is not supported; using parentbased_traceidratio", sampler_name)
        sampler_name = "parentbased_traceidratio"
    ratio = cfg.ratio
    if ratio is None:
        try:
            ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            ratio = 1.0
    propagators: tuple[str, ...] = cfg.propagators or tuple(
        p.strip() for p in env.get("OTEL_PROPAGATORS", "tracecontext,baggage").split(",")
    )
    unknown = [p for p in propagators if p not in FORMATS]
    if unknown:
        log.warning("unknown propagator(s) ignored: %s", ", ".join(unknown))
    resource = {**_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", "")), **cfg.resource_attributes}
    resource["service.name"] = config.service
    span_file = None
    if endpoint is None:
        span_file = cfg.span_file or DEFAULT_SPAN_DIR / f"{config.service}.jsonl"
    return TracingSettings(
        enabled=enabled,
        service=config.service,
        endpoint=_traces_url(endpoint, protocol) if endpoint else None,
        protocol=protocol,
        headers=headers,
        sampler=Sampler(sampler_name, max(0.0, min(1.0, ratio))),
        propagators=tuple(p for p in propagators if p in FORMATS),
        resource=resource,
        span_file=span_file,
    )


_TRACERS: dict[int, tuple[SidecarConfig, Tracer | None]] = {}


def tracer_for(config: SidecarConfig) -> Tracer | None:
    """The process's tracer for this config (one per config object), None when off."""
    cached = _TRACERS.get(id(config))
    if cached is not None and cached[0] is config:
        return cached[1]
    found = settings(config)
    tracer = None
    if found.enabled:
        cfg = config.tracing
        exporter: Exporter
        if found.endpoint is not None and found.protocol == "http/protobuf":
            exporter = OtlpHttpExport(
                found.endpoint, found.headers, cfg.export_timeout, found.resource
            )
            where = f"OTLP {found.protocol} {found.endpoint}"
        elif found.endpoint is not None:
            exporter = OtlpExport(
                found.endpoint, found.protocol, found.headers, cfg.export_timeout, found.resource
            )
            where = f"OTLP {found.protocol} {found.endpoint}"
        else:
            assert found.span_file is not None
            exporter = FileExport(found.span_file, config.service, cfg.span_file_max_bytes)
            where = f"span file {found.span_file}"
        queue = SpanQueue(exporter, cfg.queue_size, cfg.batch_size, cfg.export_interval)
        atexit.register(queue.shutdown, cfg.export_timeout + 1.0)
        tracer = Tracer(found.sampler, found.propagators, queue)
        # The export thread runs Python while the loop serves traffic; by default it may hold
        # the GIL for 5 ms before the loop gets it back. 1 ms bounds what it adds to a p99.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        log.info(
            "tracing: %s (ratio %g), propagating %s, spans to %s",
            found.sampler.name,
            found.sampler.ratio,
            "+".join(found.propagators) or "nothing",
            where,
        )
    _TRACERS[id(config)] = (config, tracer)
    return tracer


def edge_layers(config: SidecarConfig, direction: str) -> list[LayerFactory]:
    tracer = tracer_for(config)
    if tracer is None:
        return []
    if direction == "inbound":
        return [lambda inner: TraceServer(inner, tracer)]
    return [lambda inner: TraceOutbound(inner, tracer)]


def attempt_layers(config: SidecarConfig) -> list[LayerFactory]:
    tracer = tracer_for(config)
    return [] if tracer is None else [lambda inner: TraceAttempt(inner, tracer)]


def log_fields(config: SidecarConfig) -> LogFields | None:
    fields = config.access_log_fields
    if not fields.query and not fields.headers:
        return None
    return LogFields(fields.query, fields.headers, fields.mask_headers, fields.mask_query_params)


def statistics(config: SidecarConfig) -> dict[str, object]:
    """For the admin API: the span queue's counters (no tracer is built for asking)."""
    cached = _TRACERS.get(id(config))
    tracer = cached[1] if cached is not None and cached[0] is config else None
    if tracer is None:
        return {"enabled": False}
    return {"enabled": True, **tracer.queue.statistics()}
