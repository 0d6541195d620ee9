"""The gateway's own config keys, validated with pydantic so errors name the key.

    routes.2.auth: unknown JWT provider 'shop' (jwt_providers has: partners)

The sidecar keys a gateway shares (service, discovery, tls, limits, timeouts...) stay in
`sidecar.config`; `sidecar.gateway_config.GatewayConfig` joins the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mesh.gateway.paths import normalise_path


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _hostport(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return value


class HttpsConfig(_Model):
    """TLS for outside clients: the gateway's public certificate; no client certificate."""

    listen: str
    cert: Path
    key: Path

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _hostport(value)


class IngressConfig(_Model):
    #: Plain HTTP listener for outside clients.
    listen: str | None = None
    https: HttpsConfig | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return None if value is None else _hostport(value)

    @model_validator(mode="after")
    def _some_listener(self) -> IngressConfig:
        if self.listen is None and self.https is None:
            raise ValueError("needs listen, https, or both")
        return self


Algorithm = Literal["RS256", "ES256", "HS256"]


class JwtProviderConfig(_Model):
    """Who issues tokens and where their keys are (a JWKS file or URL)."""

    issuer: str | None = None
    #: The token's `aud` must name one of these (when given).
    audiences: tuple[str, ...] = ()
    algorithms: tuple[Algorithm, ...] = ("RS256", "ES256")
    jwks_file: Path | None = None
    jwks_url: str | None = Field(None, pattern=r"^https?://")
    #: Key sets are re-read this often (and once, at most every `min_refresh_interval`
    #: seconds, when a token names a key id the set does not have).
    refresh_interval: float = Field(300.0, ge=1)
    min_refresh_interval: float = Field(5.0, ge=0)
    fetch_timeout: float = Field(5.0, gt=0, le=60)
    #: Tolerance on exp/nbf/iat for clocks that disagree a little.
    clock_skew: float = Field(30.0, ge=0, le=300)
    require_exp: bool = True
    #: Claim name -> request header carrying it upstream (client copies are removed).
    claims_to_headers: dict[str, str] = {}
    #: Forward the client's Authorization header upstream (default: removed).
    forward_token: bool = False

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtProviderConfig:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("set exactly one of jwks_file and jwks_url")
        return self

    @field_validator("claims_to_headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        return {claim: _header_name(header) for claim, header in value.items()}


class ApiKeySetConfig(_Model):
    """API keys: consumer name -> key, inline or in a YAML/JSON file of the same shape."""

    header: str = "x-api-key"
    keys: dict[str, str] = {}
    keys_file: Path | None = None
    #: Header telling the upstream which consumer called (client copies are removed).
    consumer_header: str = "x-api-consumer"

    @field_validator("header", "consumer_header")
    @classmethod
    def _names(cls, value: str) -> str:
        return _header_name(value)

    @model_validator(mode="after")
    def _some_keys(self) -> ApiKeySetConfig:
        if not self.keys and self.keys_file is None:
            raise ValueError("set keys or keys_file")
        return self


def _header_name(value: str) -> str:
    name = value.strip().lower()
    if not name or not all(c.isalnum() or c == "-" for c in name):
        raise ValueError(f"{value!r} is not a header name (letters, digits and -)")
    return name


class RateLimitConfig(_Model):
    """A token bucket per key: `requests` per `per` seconds, bursts up to `burst`."""

    requests: int = Field(ge=1)
    per: float = Field(1.0, gt=0)
    #: Bucket size; default `requests` (the N+1th request within the window is refused).
    burst: int | None = Field(None, ge=1)
    key: Literal["ip", "sub", "api_key"] = "ip"
    #: Keys remembered at most (least recently seen forgotten first: a full bucket).
    max_keys: int = Field(10_000, ge=1)


class AuthConfig(_Model):
    kind: Literal["public", "jwt", "api_key"] = "public"
    #: The JWT provider or API key set by name.
    name: str = ""


class RouteConfig(_Model):
    name: str = ""
    #: Host names ("shop.example.com", "*.example.com"); empty means any host.
    hosts: tuple[str, ...] = ()
    prefix: str = "/"
    #: Match the prefix case-insensitively (default: `/ADMIN` is `/admin`).
    case_sensitive: bool = False
    service: str = Field(min_length=1)
    #: Replaces the matched prefix in the forwarded path.
    rewrite: str | None = None
    auth: AuthConfig = AuthConfig()
    rate_limit: RateLimitConfig | None = None
    cache: bool = False
    compress: bool = True
    #: Deadline for the whole exchange (default: outbound_timeouts.request).
    timeout: float | None = Field(None, gt=0)

    @field_validator("auth", mode="before")
    @classmethod
    def _auth(cls, value: Any) -> Any:
        """`public`, `{jwt: PROVIDER}` or `{api_key: SET}`."""
        if value == "public" or value is None:
            return {"kind": "public"}
        if isinstance(value, dict) and len(value) == 1:
            ((kind, name),) = value.items()
            if kind in ("jwt", "api_key") and isinstance(name, str) and name:
                return {"kind": kind, "name": name}
        if isinstance(value, AuthConfig):
            return value
        raise ValueError("expected public, {jwt: PROVIDER} or {api_key: KEY_SET}")

    @field_validator("prefix", "rewrite")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            canonical = normalise_path(value.encode("ascii")).decode()
        except (UnicodeEncodeError, ValueError) as exc:
            raise ValueError(f"{value!r} is not a plain path: {exc}") from None
        if canonical != value:
            raise ValueError(f"{value!r} is not in normal form (it means {canonical!r})")
        return value

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        hosts = tuple(h.lower() for h in value)
        for host in hosts:
            bare = host[2:] if host.startswith("*.") else host
            if not bare or "*" in bare or ":" in bare or "/" in bare:
                raise ValueError(f"{host!r}: expected a host name or *.suffix (no port)")
        return hosts


class CacheConfig(_Model):
    max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    max_entry_bytes: int = Field(1024 * 1024, ge=0)


class CompressionConfig(_Model):
    gzip_level: int = Field(6, ge=1, le=9)
    brotli_quality: int = Field(4, ge=0, le=11)
    #: Bodies known to be smaller than this are sent as they are.
    min_bytes: int = Field(256, ge=0)
    #: Media types compressed (besides text/*, and +json / +xml suffixes).
    types: tuple[str, ...] = (
        "application/json",
        "application/javascript",
        "application/xml",
        "image/svg+xml",
    )


class GatewaySection(_Model):
    """Everything the gateway adds to a sidecar's config."""

    ingress: IngressConfig
    routes: tuple[RouteConfig, ...] = Field(min_length=1)
    jwt_providers: dict[str, JwtProviderConfig] = {}
    api_keys: dict[str, ApiKeySetConfig] = {}
    cache: CacheConfig = CacheConfig()
    compression: CompressionConfig = CompressionConfig()

    @model_validator(mode="after")
    def _references(self) -> GatewaySection:
        seen: set[tuple[tuple[str, ...], str]] = set()
        for i, route in enumerate(self.routes):
            where = f"routes.{i}"
            auth = route.auth
            if auth.kind == "jwt" and auth.name not in self.jwt_providers:
                raise ValueError(f"{where}.auth: unknown JWT provider {auth.name!r}")
            if auth.kind == "api_key" and auth.name not in self.api_keys:
                raise ValueError(f"{where}.auth: unknown API key set {auth.name!r}")
            limit = route.rate_limit
            if limit is not None and limit.key == "sub" and auth.kind != "jwt":
                raise ValueError(f"{where}.rate_limit.key: sub needs JWT auth on the route")
            if limit is not None and limit.key == "api_key" and auth.kind != "api_key":
                raise ValueError(f"{where}.rate_limit.key: api_key needs API key auth")
            prefix = route.prefix if route.case_sensitive else route.prefix.lower()
            key = (tuple(sorted(route.hosts)), prefix)
            if key in seen:
                raise ValueError(f"{where}: another route has the same hosts and prefix")
            seen.add(key)
        return self
