"""Envoy-style resource counters per upstream: each a gauge with a hard limit.

A gauge refuses at its limit and counts the refusal (Envoy's `*_overflow` stats), so every
cap is visible. `UpstreamResources` holds the four of one upstream; the bulkhead stands for
requests and pending, the Retry layer takes `retries`, the pools `connections`.
"""

from __future__ import annotations

from typing import Any

from mesh.resilience.policy import ResourceLimits


class ResourceGauge:
    __slots__ = ("in_use", "limit", "name", "overflowed")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.in_use = 0
        self.overflowed = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            self.overflowed += 1
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        if self.in_use <= 0:
            raise RuntimeError(f"{self.name} released more often than acquired")
        self.in_use -= 1

    def statistics(self) -> dict[str, Any]:
        return {"limit": self.limit, "in_use": self.in_use, "overflowed_total": self.overflowed}

    def __repr__(self) -> str:
        return (
            f"<ResourceGauge {self.name} {self.in_use}/{self.limit} overflowed={self.overflowed}>"
        )


class UpstreamResources:
    def __init__(self, limits: ResourceLimits) -> None:
        self.limits = limits
        self.connections = ResourceGauge("connections", limits.max_connections)
        self.pending = ResourceGauge("pending", limits.max_pending)
        self.requests = ResourceGauge("requests", limits.max_requests)
        self.retries = ResourceGauge("retries", limits.max_retries)

    def gauges(self) -> tuple[ResourceGauge, ...]:
        return (self.connections, self.pending, self.requests, self.retries)

    def statistics(self) -> dict[str, Any]:
        return {gauge.name: gauge.statistics() for gauge in self.gauges()}

    def __repr__(self) -> str:
        inner = ", ".join(f"{g.name}={g.in_use}/{g.limit}" for g in self.gauges())
        return f"<UpstreamResources {inner}>"
