"""Config: file, then flags, into one validated, frozen tree.

Every key is documented in the README with its default. Errors name the key and say why:

    config error: upstreams.0.local_port: Input should be less than or equal to 65535
"""

from __future__ import annotations

import json
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

from mesh.policy import BalancePolicy, HttpLimits, PoolPolicy, TimeoutPolicy

Port = int


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
    if not sep or not name or not port.isdigit():
        raise ConfigError(f"--upstream {text!r}: expected NAME=LOCALPORT")
    return {"name": name, "local_port": int(port)}


def build(file: Path | None, overrides: dict[str, Any]) -> SidecarConfig:
    """File values, then flag values (only those given) on top; validated once."""
    data = read_file(file) if file else {}
    for key, value in overrides.items():
        if value is None or value == ():
            continue
        if key == "upstreams":
            value = [*data.get("upstreams", []), *value]
        data[key] = value
    try:
        return SidecarConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "config"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{where}: {message}")
    return "; ".join(lines)
