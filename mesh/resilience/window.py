"""Two event counts over a sliding time window, kept in fixed slices.

The window at time `now` is the slice holding `now` plus the `slices - 1` before it, so it
covers between `span - span/slices` and `span` seconds. Adding an event costs an integer
division and two increments; nothing is allocated after construction.
"""

from __future__ import annotations


class SlidingCounts:
    __slots__ = ("_first", "_second", "_slices", "_slot", "_width", "first", "second")

    def __init__(self, span: float, slices: int = 10) -> None:
        if span <= 0 or slices < 1:
            raise ValueError("a window needs a positive span and at least one slice")
        self._slices = slices
        self._width = span / slices
        self._first = [0] * slices
        self._second = [0] * slices
        #: Absolute index of the newest slice (far in the past until the first event).
        self._slot = -(1 << 62)
        #: Totals over the window, as of the last `advance`.
        self.first = 0
        self.second = 0

    def advance(self, now: float) -> None:
        """Drop the slices that have left the window at `now`."""
        slot = int(now // self._width)
        gap = slot - self._slot
        if gap <= 0:
            return  # same slice (or a clock that stepped back: keep counting where we are)
        n = self._slices
        if gap >= n:
            for i in range(n):
                self._first[i] = 0
                self._second[i] = 0
            self.first = 0
            self.second = 0
        else:
            for s in range(self._slot + 1, slot + 1):
                i = s % n
                self.first -= self._first[i]
                self.second -= self._second[i]
                self._first[i] = 0
                self._second[i] = 0
        self._slot = slot

    def add_first(self, now: float) -> None:
        slot = int(now // self._width)
        if slot != self._slot:
            self.advance(now)
        self._first[self._slot % self._slices] += 1
        self.first += 1

    def add_second(self, now: float) -> None:
        slot = int(now // self._width)
        if slot != self._slot:
            self.advance(now)
        self._second[self._slot % self._slices] += 1
        self.second += 1

    def window_start(self, now: float) -> float:
        """Earliest time whose events still count at `now`."""
        return (int(now // self._width) - self._slices + 1) * self._width

    def reset(self) -> None:
        for i in range(self._slices):
            self._first[i] = 0
            self._second[i] = 0
        self.first = 0
        self.second = 0

    def __repr__(self) -> str:
        return f"<SlidingCounts {self.first}/{self.second} over {self._width * self._slices:g}s>"
