"""A fixed-bucket histogram in plain Python numbers: a short scan and two additions per sample."""

from __future__ import annotations

from typing import Final

#: Upper bounds in seconds, Prometheus' client defaults widened at both ends: a loopback
#: hop takes well under a millisecond, a stuck upstream up to the request timeout.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


def bucket_index(bounds: tuple[float, ...], value: float) -> int:
    """The first bucket whose bound is at least `value` (`bisect_left`), by a scan from the
    lowest: samples gather in the first few buckets, where comparing unboxed floats is
    cheaper than bisect's generic comparisons."""
    index = 0
    for bound in bounds:
        if value <= bound:
            return index
        index += 1
    return index


class Histogram:
    """Counts per bucket (not cumulative; the last slot is +Inf) and the sum of samples.

    Bucket bounds are inclusive (`le`), as Prometheus defines them.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bucket_index(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count) pairs as Prometheus exposes them, +Inf last."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)
