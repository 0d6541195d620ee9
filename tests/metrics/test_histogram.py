"""The fixed-bucket histogram follows Prometheus' bucket rules: `le` is inclusive, counts
are cumulative, +Inf holds everything, and the sum is exact."""

from __future__ import annotations

from mesh.metrics.histogram import Histogram


def test_bounds_are_inclusive_and_counts_cumulative() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert histogram.count == 5
    assert histogram.sum == 0.05 + 0.1 + 0.5 + 1.0 + 7.0
