"""Cross-hop retry coordination: what a request tells the next hop about its retries.

Each attempt a Retry layer sends carries two headers:

    x-mesh-attempt: N        the highest attempt number of any hop so far (1: nobody retried)
    x-mesh-deadline-ms: M    milliseconds left before this attempt's deadline

Apps propagate them from their inbound request to their outbound calls, as they do trace
context. A hop reading them decides how much it may retry itself (`allowance`):

- no header: the outermost hop, retries by its policy (ALL);
- attempt 1: the caller is a mesh hop that will retry app failures itself, so this hop
  only retries failures that never reached an app (NEVER_SENT_ONLY, with
  `RetryPolicy.defer_to_caller`), which add no load to the service behind it;
- attempt >= 2: the caller already retried: no retries here (NONE), and the attempt number
  travels on, so no hop below retries either.

So a failing leaf behind a chain of hops sees about (1 + budget ratio) times the offered
load, not (1 + retries) ** hops. The deadline header caps this hop's own deadline (it is an
upper bound: time spent in the app since is not subtracted), and a retry whose remaining
time is below what an attempt usually takes is not made.

Values that do not parse are ignored, as if absent: a broken header can only turn retries
off, never on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from mesh.http1.message import FormattedInts, Headers

ATTEMPT_HEADER: Final = b"x-mesh-attempt"
DEADLINE_HEADER: Final = b"x-mesh-deadline-ms"

NONE: Final = 0
NEVER_SENT_ONLY: Final = 1
ALL: Final = 2

#: Bounds on what a header may claim (a day of deadline, a hundred attempts).
_MAX_ATTEMPT: Final = 100
_MAX_DEADLINE_MS: Final = 86_400_000
#: Deadline header values: requests under one policy repeat the same few.
_MS_TEXT: Final = FormattedInts(b"%d")
#: The header for small attempt numbers, made once (no allocation per request).
_ATTEMPT_PAIRS: Final = [(ATTEMPT_HEADER, b"%d" % n) for n in range(16)]


@dataclass(frozen=True, slots=True)
class CallerHop:
    """What the previous hops said about this request."""

    #: Highest attempt number along the chain (0: the header was absent or broken).
    attempt: int
    #: Milliseconds the caller had left when it sent the request (None: not given).
    deadline_ms: int | None


def _parse_int(value: bytes, upper: int) -> int | None:
    value = value.strip()
    if not value.isdigit() or len(value) > 12:
        return None
    return min(int(value), upper)


def read_caller(headers: Headers) -> CallerHop | None:
    """The caller's hop headers, or None when it sent neither (the common, free case)."""
    attempt: int | None = None
    deadline: int | None = None
    found = False
    for name, value in headers:
        if name == ATTEMPT_HEADER:
            found = True
            attempt = _parse_int(value, _MAX_ATTEMPT)
        elif name == DEADLINE_HEADER:
            found = True
            deadline = _parse_int(value, _MAX_DEADLINE_MS)
    if not found:
        return None
    return CallerHop(attempt or 0, deadline)


def allowance(caller: CallerHop | None, defer_to_caller: bool) -> int:
    """How much this hop may retry: ALL, NEVER_SENT_ONLY or NONE."""
    if caller is None or caller.attempt == 0:
        return ALL
    if caller.attempt >= 2:
        return NONE
    return NEVER_SENT_ONLY if defer_to_caller else ALL


def stamp(headers: Headers, attempt: int, deadline_ms: int | None, fresh: bool) -> None:
    """Write this hop's headers for one attempt, in place.

    `fresh` says neither header is present yet (first attempt, no caller headers): they are
    appended without a search. Otherwise existing ones are replaced and duplicates dropped.
    """
    if fresh:
        headers.append(
            _ATTEMPT_PAIRS[attempt] if attempt < 16 else (ATTEMPT_HEADER, b"%d" % attempt)
        )
        if deadline_ms is not None:
            headers.append((DEADLINE_HEADER, _MS_TEXT.get(deadline_ms if deadline_ms > 0 else 0)))
        return
    headers[:] = [(n, v) for n, v in headers if n != ATTEMPT_HEADER and n != DEADLINE_HEADER]
    stamp(headers, attempt, deadline_ms, True)
