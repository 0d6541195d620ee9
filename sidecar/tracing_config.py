"""The `tracing:` and `access_log_fields:` config sections (README: "Tracing").

Unset tracing keys fall back to the standard OpenTelemetry environment variables when the
tracer is built (`sidecar.tracing_wiring`), so `/config` shows what the file and flags said.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

Propagator = Literal["tracecontext", "baggage", "b3", "b3multi"]
SamplerName = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TracingConfig(_Model):
    #: None: on when an OTLP endpoint is configured (here or OTEL_EXPORTER_OTLP_*ENDPOINT).
    enabled: bool | None = None
    #: OTLP collector; a URL without a path gets `/v1/traces` (http/protobuf). Unset: spans
    #: go to the local span file. Env OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, ..._ENDPOINT.
    endpoint: str | None = Field(None, pattern=r"^https?://")
    #: Env OTEL_EXPORTER_OTLP_PROTOCOL; default http/protobuf.
    protocol: Literal["http/protobuf", "grpc"] | None = None
    #: Sent with every export (e.g. an API key). Env OTEL_EXPORTER_OTLP_HEADERS.
    headers: dict[str, SecretStr] = {}
    #: Env OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG; default parent-based, ratio 1.
    sampler: SamplerName | None = None
    ratio: float | None = Field(None, ge=0.0, le=1.0)
    #: Formats written on the way out (all are read). Env OTEL_PROPAGATORS.
    propagators: tuple[Propagator, ...] | None = None
    #: Added to the resource; `service.name` is always the sidecar's service.
    #: Env OTEL_RESOURCE_ATTRIBUTES.
    resource_attributes: dict[str, str] = {}
    #: JSON-lines span file used when no endpoint is set (`mesh traces` reads it).
    #: Default: <temp dir>/mesh-spans/<service>.jsonl.
    span_file: Path | None = None
    span_file_max_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024)
    #: Spans waiting for export; more are dropped (and counted).
    queue_size: int = Field(2048, ge=1)
    batch_size: int = Field(512, ge=1)
    #: The export thread sends what is queued this often.
    export_interval: float = Field(1.0, gt=0, le=60)
    #: Bound on one export, so a blackholed collector only delays the export thread.
    export_timeout: float = Field(2.0, gt=0, le=60)


DEFAULT_MASKED_HEADERS = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
)
DEFAULT_MASKED_PARAMS = (
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "password",
    "secret",
    "api_key",
    "apikey",
    "key",
    "signature",
    "sig",
)


class AccessLogFieldsConfig(_Model):
    """Extra access-log fields, with the values of sensitive names masked."""

    #: Log the query string (`query`), masking the parameters in `mask_query_params`.
    query: bool = False
    #: Request headers logged by name (`headers`), masking those in `mask_headers`.
    headers: tuple[str, ...] = ()
    mask_headers: tuple[str, ...] = DEFAULT_MASKED_HEADERS
    mask_query_params: tuple[str, ...] = DEFAULT_MASKED_PARAMS
