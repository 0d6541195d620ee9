"""The fixed-bucket histogram follows Prometheus' bucket rules: `le` is inclusive, counts
are cumulative, +Inf holds everything, and the sum is exact."""

from __future__ import annotations

import bisect

from hypothesis import given
from hypothesis import strategies as st

from mesh.metrics.histogram import LATENCY_BUCKETS, Histogram, bucket_index


def test_bounds_are_inclusive_and_counts_cumulative() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert histogram.count == 5
    assert histogram.sum == 0.05 + 0.1 + 0.5 + 1.0 + 7.0


@given(st.floats(min_value=0.0, max_value=60.0) | st.sampled_from(LATENCY_BUCKETS))
def test_a_sample_lands_in_the_first_bucket_whose_bound_holds_it(value: float) -> None:
    assert bucket_index(LATENCY_BUCKETS, value) == bisect.bisect_left(LATENCY_BUCKETS, value)
