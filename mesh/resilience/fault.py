"""Fault injection decisions: which requests to delay or abort, and by how much.

From the policy (a share of all requests) or, where the listener trusts its callers
(`FaultPolicy.honour_headers`), from request headers, which override the policy:

    x-mesh-fault-delay-ms: 250          delay by 250 ms ...
    x-mesh-fault-delay-percent: 50      ... half of such requests (default 100)
    x-mesh-fault-abort: 503             abort with 503 (4xx or 5xx) ...
    x-mesh-fault-abort-percent: 10      ... a tenth of such requests (default 100)

A header overrides the policy for its kind of fault; a percent header without its fault
header, and values that do not parse, are ignored. Delays are capped at `MAX_DELAY` seconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from mesh.http1.message import Headers
from mesh.resilience.clock import Random
from mesh.resilience.policy import FaultPolicy

DELAY_HEADER = b"x-mesh-fault-delay-ms"
DELAY_PERCENT_HEADER = b"x-mesh-fault-delay-percent"
ABORT_HEADER = b"x-mesh-fault-abort"
ABORT_PERCENT_HEADER = b"x-mesh-fault-abort-percent"
FAULT_HEADERS = frozenset({DELAY_HEADER, DELAY_PERCENT_HEADER, ABORT_HEADER, ABORT_PERCENT_HEADER})
MAX_DELAY = 60.0


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to one request: wait `delay` seconds, then abort with `abort_status`."""

    delay: float = 0.0
    #: 0: no abort.
    abort_status: int = 0


def _number(value: bytes) -> float | None:
    try:
        number = float(value.strip().decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return number if number == number and number >= 0 else None  # rejects NaN


class FaultInjector:
    def __init__(self, policy: FaultPolicy, rng: Random | None = None) -> None:
        self.policy = policy
        self._random = rng or random.random
        self.delayed = 0
        self.aborted = 0

    def decide(self, headers: Headers | None = None) -> Fault | None:
        """The fault for one request, or None. `headers` only when they are to be honoured."""
        policy = self.policy
        delay = policy.delay
        delay_percent = policy.delay_percent if delay > 0 else 0.0
        abort_status = policy.abort_status
        abort_percent = policy.abort_percent
        if headers is not None:
            asked: dict[bytes, float] | None = None
            for name, value in headers:
                if name in FAULT_HEADERS:
                    number = _number(value)
                    if number is not None:
                        if asked is None:
                            asked = {}
                        asked[name] = number
            if asked is not None:
                # A header overrides the policy for its kind; a percent header alone does not.
                if DELAY_HEADER in asked:
                    delay = min(asked[DELAY_HEADER] / 1000, MAX_DELAY)
                    delay_percent = min(asked.get(DELAY_PERCENT_HEADER, 100.0), 100.0)
                asked_status = asked.get(ABORT_HEADER, 0.0)
                if 400 <= asked_status <= 599 and asked_status == int(asked_status):
                    abort_status = int(asked_status)
                    abort_percent = min(asked.get(ABORT_PERCENT_HEADER, 100.0), 100.0)
        if delay_percent <= 0 and abort_percent <= 0:
            return None
        rand = self._random
        wait = delay if delay > 0 and rand() * 100 < delay_percent else 0.0
        status = abort_status if abort_percent > 0 and rand() * 100 < abort_percent else 0
        if not wait and not status:
            return None
        if wait:
            self.delayed += 1
        if status:
            self.aborted += 1
        return Fault(wait, status)

    def statistics(self) -> dict[str, Any]:
        policy = self.policy
        return {
            "delay_percent": policy.delay_percent,
            "delay": policy.delay,
            "abort_percent": policy.abort_percent,
            "abort_status": policy.abort_status,
            "honour_headers": policy.honour_headers,
            "delayed_total": self.delayed,
            "aborted_total": self.aborted,
        }

    def __repr__(self) -> str:
        policy = self.policy
        return (
            f"<FaultInjector delay {policy.delay_percent:g}% x {policy.delay:g}s, "
            f"abort {policy.abort_percent:g}% -> {policy.abort_status}, "
            f"headers {'honoured' if policy.honour_headers else 'ignored'}, "
            f"delayed={self.delayed} aborted={self.aborted}>"
        )
