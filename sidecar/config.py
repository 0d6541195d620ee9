"""Config: file, then flags, into one validated, frozen tree.

Every key is documented in the README with its default. Errors name the key and say why:

    config error: upstreams.0.local_port: Input should be less than or equal to 65535
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mesh.identity.authorize import StaticAuthorizer
from mesh.policy import BalancePolicy, HttpLimits, PoolPolicy, TimeoutPolicy
from sidecar.policies import (
    META_KEY,
    InboundPolicies,
    PolicyBook,
    PolicyError,
    UpstreamPolicies,
    UpstreamTimeouts,
    combine,
    parse_meta,
)
from sidecar.tracing_config import AccessLogFieldsConfig, TracingConfig

Port = int
_META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class ConfigError(ValueError):
    """Invalid configuration; the message names the key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_hostport(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return value


class LimitsConfig(_Model):
    max_header_bytes: int = Field(60 * 1024, ge=1024, le=1024 * 1024)
    max_headers: int = Field(100, ge=8, le=1000)
    header_timeout: float = Field(10.0, gt=0)
    idle_timeout: float = Field(60.0, gt=0)
    body_timeout: float = Field(30.0, gt=0)
    write_timeout: float = Field(30.0, gt=0)
    max_connections: int = Field(10_000, ge=1)
    max_pipelined: int = Field(16, ge=1, le=1024)
    allow_http10: bool = True
    body_buffer_bytes: int = Field(256 * 1024, ge=4096, le=64 * 1024 * 1024)

    def policy(self) -> HttpLimits:
        return HttpLimits(**self.model_dump())


class TimeoutsConfig(_Model):
    connect: float = Field(1.0, gt=0, le=60)
    request: float = Field(15.0, gt=0)

    def policy(self) -> TimeoutPolicy:
        return TimeoutPolicy(**self.model_dump())


class PoolConfig(_Model):
    max_idle: int = Field(256, ge=0)
    idle_timeout: float = Field(30.0, gt=0)

    def policy(self) -> PoolPolicy:
        return PoolPolicy(**self.model_dump())


class UpstreamConfig(_Model):
    name: str = Field(min_length=1)
    local_port: Port = Field(ge=1, le=65535)
    local_address: str = "127.0.0.1"
    #: "tcp": the local port tunnels bytes to the service (no HTTP parsing). Unset: HTTP,
    #: unless Consul says the service is TCP (its Meta protocol=tcp). "http2"/"grpc": the
    #: sidecars speak HTTP/2 to each other for it (mTLS with ALPN h2), as its Meta may say too.
    protocol: Literal["http", "tcp", "http2", "grpc"] | None = None


class TunnelConfig(_Model):
    """Byte tunnels: WebSocket connections after their 101, and TCP upstreams."""

    #: A tunnel with no byte either way for this long is closed.
    idle_timeout: float = Field(300.0, gt=0)


class ConsulConfig(_Model):
    """Discovery and registration through a Consul agent (see the README's Consul section)."""

    #: The agent's HTTP API; unset means static discovery.
    address: str | None = None
    #: A file holding the ACL token (sent as X-Consul-Token); else env CONSUL_HTTP_TOKEN.
    token_file: Path | None = None
    #: CA bundle for an https address.
    ca_file: Path | None = None
    #: Register the app and this sidecar (needs the inbound listener).
    registration: bool = True
    #: Unique per agent; default <service>-<host name>-<public port>.
    service_id: str | None = Field(None, min_length=1)
    #: Address peers use for this sidecar; default the listener's host, or the agent's node
    #: address when the listener is on a wildcard address.
    advertise_address: str | None = None
    tags: tuple[str, ...] = ()
    weight: int = Field(1, ge=1, le=65535)
    #: Service Meta of the registrations; `mesh-policy` tells callers how to call this
    #: service (a JSON object shaped like `resilience`, validated here).
    meta: dict[str, str] = {}
    #: The sidecar probes its app this often and reports to a TTL check.
    check_interval: float = Field(2.0, gt=0, le=300)
    check_ttl: float = Field(10.0, gt=0)
    #: HTTP path probed on the app (2xx passing, 429 warning); unset: a TCP connect.
    check_path: str | None = Field(None, pattern=r"^/")
    deregister_critical_after: float = Field(60.0, ge=60)
    #: On SIGTERM: time between leaving Consul's passing set and closing the listener.
    drain_grace: float = Field(5.0, ge=0)
    #: How long a blocking query may wait for a change.
    wait: float = Field(30.0, ge=1, le=600)
    #: While the agent fails, retries wait a random time up to this (jittered, doubling).
    backoff_max: float = Field(5.0, ge=0.1, le=300)
    timeout: float = Field(5.0, gt=0, le=60)
    max_response_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024)
    max_endpoints: int = Field(5000, ge=1)

    @field_validator("address")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Like the consul CLI: a bare HOST:PORT means http.
        url = value if "://" in value else f"http://{value}"
        scheme, _, rest = url.partition("://")
        if scheme not in ("http", "https") or not rest or "/" in rest.rstrip("/"):
            raise ValueError(f"{value!r} is not an http(s)://HOST:PORT address")
        return url.rstrip("/")

    @field_validator("meta")
    @classmethod
    def _meta(cls, value: dict[str, str]) -> dict[str, str]:
        # Consul's own limits, checked here so the agent never refuses the registration.
        if len(value) > 64:
            raise ValueError("at most 64 keys")
        for key, text in value.items():
            if not _META_KEY.match(key):
                raise ValueError(f"{key!r}: keys are 1-128 of A-Z a-z 0-9 _ -")
            if len(text) > 512:
                raise ValueError(f"{key}: values are at most 512 characters")
        if META_KEY in value:
            try:
                combine(UpstreamPolicies(), ("meta", parse_meta(value[META_KEY])))
            except PolicyError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _ttl_outlives_interval(self) -> ConsulConfig:
        if self.check_ttl < 2 * self.check_interval:
            raise ValueError("check_ttl must be at least twice check_interval")
        return self


class TlsConfig(_Model):
    """This sidecar's leaf certificate, its key and the mesh roots: PEM files, or (source
    consul) the local Consul agent's Connect CA."""

    source: Literal["files", "consul"] = "files"
    cert: Path | None = None
    key: Path | None = None
    roots: Path | None = None

    @model_validator(mode="after")
    def _source_needs(self) -> TlsConfig:
        given = [p for p in (self.cert, self.key, self.roots) if p is not None]
        if self.source == "files" and len(given) != 3:
            raise ValueError("source files needs cert, key and roots")
        if self.source == "consul" and given:
            raise ValueError("source consul takes no cert, key or roots files")
        return self


class AuthorizationConfig(_Model):
    """Static policy on callers' service names (Consul intentions replace it when used)."""

    #: Unset: allow without Consul; with intentions, Consul's own default.
    default: Literal["allow", "deny"] | None = None
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def authorizer(self) -> StaticAuthorizer:
        return StaticAuthorizer(self.default != "deny", frozenset(self.allow), frozenset(self.deny))


class MetricsConfig(_Model):
    """Where Prometheus scrapes. `/metrics` is always on the admin listener too."""

    #: A second listener serving only GET /metrics, e.g. 0.0.0.0:9102 for a Prometheus in
    #: another container; control endpoints stay on the admin listener (loopback).
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _hostport(cls, value: str | None) -> str | None:
        return None if value is None else _check_hostport(value)


class SidecarConfig(_Model):
    service: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    app_host: str = "127.0.0.1"
    app_port: Port | None = Field(None, ge=1, le=65535)
    listen: str | None = None
    upstreams: tuple[UpstreamConfig, ...] = ()
    proxy_port: Port | None = Field(None, ge=0, le=65535)
    proxy_address: str = "127.0.0.1"
    passthrough: Literal["allow", "deny"] = "allow"
    catalog: Path | None = None
    admin: str = "127.0.0.1:15000"
    access_log: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    drain_timeout: float = Field(30.0, ge=0)
    balance: Literal["p2c", "round_robin"] = "p2c"
    limits: LimitsConfig = LimitsConfig()
    outbound_timeouts: TimeoutsConfig = TimeoutsConfig()
    # Kuma's rule: inbound timeouts are twice the outbound ones, so the caller's own
    # deadline fires first and the caller sees the precise reason.
    inbound_timeouts: TimeoutsConfig = TimeoutsConfig(connect=1.0, request=30.0)
    pool: PoolConfig = PoolConfig()
    consul: ConsulConfig = ConsulConfig()
    tls: TlsConfig | None = None
    authorization: AuthorizationConfig = AuthorizationConfig()
    metrics: MetricsConfig = MetricsConfig()
    #: Defaults for calling every upstream (sidecar/policies.py; timeouts: outbound_timeouts).
    resilience: UpstreamPolicies = UpstreamPolicies()
    #: Per upstream service: overrides of `resilience` (and `timeouts`), merged key by key.
    services: dict[str, dict[str, Any]] = {}
    #: What protects the local app: a bulkhead, and optional fault injection.
    inbound: InboundPolicies = InboundPolicies()
    #: "tcp": the app speaks raw TCP; the inbound listener tunnels bytes to it.
    #: "http2"/"grpc": the app speaks HTTP/2 without TLS (h2c, prior knowledge).
    app_protocol: Literal["http", "tcp", "http2", "grpc"] = "http"
    tunnel: TunnelConfig = TunnelConfig()
    tracing: TracingConfig = TracingConfig()
    access_log_fields: AccessLogFieldsConfig = AccessLogFieldsConfig()

    @field_validator("listen", "admin")
    @classmethod
    def _hostport(cls, value: str | None) -> str | None:
        return None if value is None else _check_hostport(value)

    @field_validator("upstreams")
    @classmethod
    def _unique_ports(cls, value: tuple[UpstreamConfig, ...]) -> tuple[UpstreamConfig, ...]:
        ports = [u.local_port for u in value]
        if len(set(ports)) != len(ports):
            raise ValueError("two upstreams share a local_port")
        return value

    @model_validator(mode="after")
    def _listen_needs_app(self) -> SidecarConfig:
        if self.listen is not None and self.app_port is None:
            raise ValueError("listen needs app_port: the inbound listener forwards to the app")
        return self

    @model_validator(mode="after")
    def _consul_ca_needs_consul(self) -> SidecarConfig:
        if self.tls is not None and self.tls.source == "consul" and self.consul.address is None:
            raise ValueError("tls.source consul needs consul.address (or CONSUL_HTTP_ADDR)")
        return self

    @model_validator(mode="after")
    def _one_discovery_source(self) -> SidecarConfig:
        if self.catalog is not None and self.consul.address is not None:
            raise ValueError("catalog and consul.address exclude each other: pick one source")
        return self

    @model_validator(mode="after")
    def _policies_valid(self) -> SidecarConfig:
        if "timeouts" in self.resilience.model_fields_set:
            raise ValueError("resilience.timeouts: set outbound_timeouts instead")
        book = self.policy_book()
        for service in self.services:
            try:
                book.local(service)
            except PolicyError as exc:
                raise ValueError(str(exc)) from None
        return self

    def policy_book(self) -> PolicyBook:
        timeouts = UpstreamTimeouts(**self.outbound_timeouts.model_dump())
        defaults = self.resilience.model_copy(update={"timeouts": timeouts})
        return PolicyBook(defaults, self.services)

    def balance_policy(self) -> BalancePolicy:
        return BalancePolicy(algorithm=self.balance)

    def redacted(self) -> dict[str, Any]:
        """The effective config as JSON-ready data, with secrets replaced."""
        data: dict[str, Any] = _redact(json.loads(self.model_dump_json()))
        return data


_SECRET_WORDS = ("token", "password", "secret", "private_key", "key_file")


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    if value is not None and any(word in key.lower() for word in _SECRET_WORDS):
        return "<redacted>"
    return value


def read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path}: not valid: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data


def parse_upstream_flag(text: str) -> dict[str, Any]:
    name, sep, port = text.partition("=")
    port, _, protocol = port.partition("/")  # NAME=PORT/tcp declares a TCP upstream
    known = ("", "http", "tcp", "http2", "grpc")
    if not sep or not name or not port.isdigit() or protocol not in known:
        raise ConfigError(f"--upstream {text!r}: expected NAME=LOCALPORT")
    flag: dict[str, Any] = {"name": name, "local_port": int(port)}
    if protocol:
        flag["protocol"] = protocol
    return flag


def build(
    file: Path | None,
    overrides: dict[str, Any],
    environ: Mapping[str, str] | None = None,
    model: type[SidecarConfig] = SidecarConfig,
) -> SidecarConfig:
    """File values, then flag values (only those given) on top; validated once.

    The consul CLI's environment variables fill in what neither set: CONSUL_HTTP_ADDR (only
    when no catalog is configured either) and CONSUL_CACERT.
    """
    data = read_file(file) if file else {}
    for key, value in overrides.items():
        if value is None or value == () or value == {}:
            continue
        if key == "upstreams":
            value = [*data.get("upstreams", []), *value]
        elif isinstance(value, dict) and isinstance(data.get(key), dict):
            value = {**data[key], **value}
        data[key] = value
    _consul_environment(data, os.environ if environ is None else environ)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _consul_environment(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    consul = data.get("consul")
    if consul is not None and not isinstance(consul, dict):
        return  # validation names the key
    consul = dict(consul or {})
    if not consul.get("address") and not data.get("catalog") and environ.get("CONSUL_HTTP_ADDR"):
        consul["address"] = environ["CONSUL_HTTP_ADDR"]
    if not consul.get("ca_file") and environ.get("CONSUL_CACERT"):
        consul["ca_file"] = environ["CONSUL_CACERT"]
    if consul:
        data["consul"] = consul


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "config"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        # A whole-config check names its key itself ("services.x.retry: ...").
        lines.append(message if where == "config" and ": " in message else f"{where}: {message}")
    return "; ".join(lines)
