"""What shapes the calls to one upstream: its timeouts and resilience policies.

Three sources, later ones winning key by key:

1. `resilience:` in the sidecar's config: the defaults for every upstream;
2. the upstream's own Consul service Meta `mesh-policy` (a JSON object of the same shape),
   so a service's owners can say how it wants to be called;
3. `services: {NAME: {...}}` in the sidecar's config: the local operator has the last word.

The policy objects themselves are the frozen dataclasses of `mesh.resilience.policy`, so a
key's default, its validation and its documentation live in one place.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mesh.policy import TimeoutPolicy
from mesh.resilience.policy import (
    BreakerPolicy,
    BudgetPolicy,
    BulkheadPolicy,
    FaultPolicy,
    OutlierPolicy,
    ResourceLimits,
    RetryPolicy,
)

log = logging.getLogger("sidecar.policies")

#: The Consul service Meta key an upstream's owners set its calling policy with.
META_KEY = "mesh-policy"


class UpstreamTimeouts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: TCP (and TLS) connect to one endpoint.
    connect: float = Field(1.0, gt=0, le=60)
    #: The whole exchange, retries included, until the response head.
    request: float = Field(15.0, gt=0)

    def policy(self) -> TimeoutPolicy:
        return TimeoutPolicy(self.connect, self.request)


class UpstreamPolicies(BaseModel):
    """Everything about calling one upstream service; every section has Envoy-like defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    retry: RetryPolicy = RetryPolicy()
    budget: BudgetPolicy = BudgetPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    outlier: OutlierPolicy = OutlierPolicy()
    limits: ResourceLimits = ResourceLimits()
    #: Longest wait for a request slot once `limits.max_requests` are in progress.
    queue_timeout: float = Field(1.0, gt=0)
    fault: FaultPolicy = FaultPolicy()

    def bulkhead(self) -> BulkheadPolicy:
        return self.limits.bulkhead(self.queue_timeout)


class InboundPolicies(BaseModel):
    """What protects the local app from its callers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bulkhead: BulkheadPolicy = BulkheadPolicy()
    fault: FaultPolicy = FaultPolicy()


class PolicyError(ValueError):
    """A policy source does not validate; the message names the key."""


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(exc: ValidationError, where: str) -> str:
    parts = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        parts.append(f"{where}.{key}: {message}" if key else f"{where}: {message}")
    return "; ".join(parts)


def combine(
    defaults: UpstreamPolicies, *layers: tuple[str, Mapping[str, Any] | None]
) -> UpstreamPolicies:
    """`defaults` with each `(where, overrides)` merged on top, in order; validated once."""
    data: dict[str, Any] = defaults.model_dump(mode="json")
    for _, overrides in layers:
        if overrides:
            data = _merge(data, overrides)
    try:
        return UpstreamPolicies.model_validate(data)
    except ValidationError as exc:
        where = "+".join(w for w, o in layers if o) or "resilience"
        raise PolicyError(_describe(exc, where)) from None


def parse_meta(text: str) -> dict[str, Any]:
    """The `mesh-policy` Meta value: a JSON object, or PolicyError."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"Meta {META_KEY}: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise PolicyError(f"Meta {META_KEY}: expected a JSON object")
    return value


class PolicyBook:
    """Resolves the effective policies of each upstream from the three sources."""

    def __init__(
        self, defaults: UpstreamPolicies, services: Mapping[str, Mapping[str, Any]]
    ) -> None:
        self.defaults = defaults
        self.services = services
        self._cache: dict[tuple[str, str], UpstreamPolicies] = {}

    def local(self, service: str) -> UpstreamPolicies:
        """Defaults plus the local override: what applies before (or without) Consul."""
        return combine(self.defaults, (f"services.{service}", self.services.get(service)))

    def resolve(self, service: str, meta: str) -> tuple[UpstreamPolicies, str]:
        """The effective policies given the upstream's Meta text ("" when none), and the
        problem with that Meta ("" when none; the Meta is then ignored)."""
        key = (service, meta)
        cached = self._cache.get(key)
        if cached is not None:
            return cached, ""
        local = (f"services.{service}", self.services.get(service))
        try:
            upstream = parse_meta(meta) if meta else None
            policies = combine(self.defaults, (f"Meta {META_KEY}", upstream), local)
        except PolicyError as exc:
            return self.local(service), str(exc)
        if len(self._cache) > 1024:
            self._cache.clear()
        self._cache[key] = policies
        return policies, ""
