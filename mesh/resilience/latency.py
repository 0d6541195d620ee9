"""What an attempt usually takes: an exponentially weighted mean of successful attempts.

The Retry layer skips a retry whose remaining deadline is below this. Only successes count:
a connect refused in a millisecond says nothing about how long a real answer takes. Until
the first sample the estimate is 0, which never blocks a retry.
"""

from __future__ import annotations

from typing import Any


class AttemptLatency:
    __slots__ = ("samples", "seconds", "weight")

    def __init__(self, weight: float = 0.1) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], not {weight!r}")
        #: How much one new sample moves the mean (0.1: about the last ten count).
        self.weight = weight
        self.seconds = 0.0
        self.samples = 0

    def observe(self, seconds: float) -> None:
        if seconds < 0:
            return
        if self.samples == 0:
            self.seconds = seconds
        else:
            self.seconds += self.weight * (seconds - self.seconds)
        self.samples += 1

    def statistics(self) -> dict[str, Any]:
        return {"typical_ms": round(self.seconds * 1000, 3), "samples": self.samples}

    def __repr__(self) -> str:
        return f"<AttemptLatency {self.seconds * 1000:.1f}ms over {self.samples} samples>"
