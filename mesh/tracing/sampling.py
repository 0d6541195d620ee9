"""Sampling decisions, the OpenTelemetry samplers' semantics without their objects.

Ratio sampling reads the trace id's low 64 bits, like the SDK's `TraceIdRatioBased`, so every
sidecar that sees a trace without a decision makes the same one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from mesh.tracing.propagation import DEFERRED

#: The values of OTEL_TRACES_SAMPLER this project understands.
SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)

_MAX: Final = 1 << 64


@dataclass(frozen=True, slots=True)
class Sampler:
    name: str = "parentbased_traceidratio"
    ratio: float = 1.0

    @property
    def bound(self) -> int:
        if self.name in ("always_on", "parentbased_always_on"):
            return _MAX
        if self.name in ("always_off", "parentbased_always_off"):
            return 0
        return round(max(0.0, min(1.0, self.ratio)) * _MAX)

    @property
    def parent_based(self) -> bool:
        return self.name.startswith("parentbased_")


class Decide:
    """`decide(parent_sampled, trace_id_low64) -> bool`, precomputed for the request path."""

    __slots__ = ("bound", "parent_based")

    def __init__(self, sampler: Sampler) -> None:
        self.bound = sampler.bound
        self.parent_based = sampler.parent_based

    def __call__(self, parent_sampled: int, low: int) -> bool:
        if self.parent_based and parent_sampled != DEFERRED:
            return parent_sampled == 1
        return low < self.bound
