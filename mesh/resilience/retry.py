"""Retry decisions: whether a failed attempt is tried again, after how long, or why not.

Built from tenacity's strategy objects, held in a `tenacity.Retrying` that is never run:
the Retry layer records each attempt's outcome in a `RetryCallState` and asks

- retry: `NeverSent() | IdempotentFailure(statuses) | GrpcUnavailable()` (tenacity
  `retry_base` predicates),
- wait:  `WaitRetryAfter(wait_random_exponential(base, max))`,
- stop:  `stop_after_attempt(1 + max_retries) | StopOnRetryAfter(max) | StopOnDeadline()`,

then does the waiting itself: the data path has no task for tenacity's loop to sleep in.
The request's facts the predicates need travel as the call state's `args[0]`, an
`AttemptFacts`.

The rules (issue 5, RELIABILITY.md row 31):
- any method is retried when the attempt certainly never reached the app: this proxy could
  not connect to the endpoint (`CONNECT_FAILURES`: refused, TLS failed, wrong identity), or
  the peer's proxy answered for itself with a never-sent reason (`draining`,
  `bulkhead-full`, ...; `NEVER_SENT_REASONS`);
- idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) are also retried on a reset
  before the response head, a per-try timeout, and the policy's statuses; POST and PATCH
  never are, since the app may have acted;
- a gRPC call (always a POST) is retried when its trailers-only answer says UNAVAILABLE,
  the one status gRPC defines as "not processed, try again"; a peer proxy's gRPC-shaped
  never-sent refusal (HTTP 200, `grpc-status`, `x-mesh-error`) counts like its 5xx form;
- only bodies that were buffered whole (at most `max_replay_body`) are replayed;
- `Retry-After` is the least wait; longer than `max_retry_after` or the deadline: no retry.
  A peer proxy's never-sent refusal is retried on another endpoint without waiting for its
  `Retry-After`, which speaks for that endpoint only;
- no retry once the time left, after the backoff, is below what an attempt usually takes.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import NamedTuple

import tenacity
from tenacity import RetryCallState
from tenacity.retry import retry_base
from tenacity.stop import stop_after_attempt, stop_base
from tenacity.wait import wait_base, wait_random_exponential

from mesh.errors import (
    MeshError,
    PeerIdentityMismatch,
    UpstreamConnectFailed,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamTlsFailed,
)
from mesh.grpc.status import RETRYABLE_CODES
from mesh.grpc.wire import is_grpc, status_in
from mesh.http1.message import IDEMPOTENT_METHODS, Response
from mesh.resilience.clock import Clock
from mesh.resilience.hop import ALL
from mesh.resilience.policy import RetryPolicy

#: This hop's failures to reach one endpoint, before any request byte was sent: another
#: endpoint may well work. (This hop's other never-sent errors are refusals for the whole
#: upstream, such as `bulkhead-full` or `all-endpoints-ejected`: retrying adds load.)
CONNECT_FAILURES: tuple[type[MeshError], ...] = (
    UpstreamConnectFailed,
    UpstreamTlsFailed,
    PeerIdentityMismatch,
)


def _never_sent_reasons() -> frozenset[str]:
    found: set[str] = set()
    pending: list[type[MeshError]] = [MeshError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.never_sent:
            found.add(cls.reason)
    return frozenset(found)


#: `x-mesh-error` words a peer proxy sends when the request never reached its app: every
#: word of the tree whose error is `never_sent` (a word means the same at every hop).
NEVER_SENT_REASONS = _never_sent_reasons()

#: Why a failed attempt was not retried (statistics keys; the budget's is its error word).
NOT_RETRYABLE = "not-retryable"
ATTEMPTS_EXHAUSTED = "attempts-exhausted"
RETRY_AFTER_TOO_LONG = "retry-after-too-long"
DEADLINE = "deadline"


@dataclass(slots=True)
class AttemptFacts:
    """What the strategies know of the request being retried (tenacity's `args[0]`)."""

    method: bytes
    #: NEVER_SENT_ONLY or ALL (see `mesh.resilience.hop`).
    allowance: int
    #: Loop time by which the whole exchange must end (None: no deadline).
    deadline: float | None
    #: Seconds an attempt usually takes.
    typical: float = 0.0
    #: Loop time of the decision.
    now: float = 0.0

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT_METHODS


class Verdict(NamedTuple):
    retry: bool
    #: Seconds to wait before the next attempt (when retrying).
    delay: float
    #: Why not (when not retrying).
    reason: str


def header(response: Response, name: bytes) -> bytes | None:
    for n, v in response.headers:
        if n == name:
            return v
    return None


def peer_never_sent(response: Response) -> bool:
    """The response is a peer proxy's own refusal made before its app saw the request."""
    reason = header(response, b"x-mesh-error")
    return reason is not None and reason.decode("latin-1") in NEVER_SENT_REASONS


def parse_retry_after(value: bytes, wall_now: float) -> float | None:
    """Seconds from a `Retry-After` value (delta-seconds or HTTP-date); None if unusable."""
    text = value.strip().decode("latin-1")
    if text.isdigit():
        return float(int(text[:12]))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # RFC 9110 dates are GMT; a zoneless one is not one of ours to trust
    return max(0.0, when.timestamp() - wall_now)


def _facts(retry_state: RetryCallState) -> AttemptFacts:
    facts = retry_state.args[0]
    assert isinstance(facts, AttemptFacts)
    return facts


def _outcome(retry_state: RetryCallState) -> tuple[Response | None, BaseException | None]:
    outcome = retry_state.outcome
    if outcome is None:
        raise RuntimeError("retry strategy asked before an outcome was recorded")
    error = outcome.exception()
    if error is not None:
        return None, error
    response = outcome.result()
    assert isinstance(response, Response)
    return response, None


class NeverSent(retry_base):
    """Any method: the attempt certainly never reached the app."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        response, error = _outcome(retry_state)
        if error is not None:
            return isinstance(error, CONNECT_FAILURES)
        return response is not None and response.status >= 500 and peer_never_sent(response)


class IdempotentFailure(retry_base):
    """Idempotent methods: a reset before the head, a per-try timeout, a retryable status."""

    def __init__(self, statuses: frozenset[int]) -> None:
        self.statuses = statuses

    def __call__(self, retry_state: RetryCallState) -> bool:
        facts = _facts(retry_state)
        if facts.allowance != ALL or not facts.idempotent:
            return False
        response, error = _outcome(retry_state)
        if error is not None:
            return isinstance(error, (UpstreamReset, UpstreamTimeout))
        return response is not None and response.status in self.statuses


class GrpcUnavailable(retry_base):
    """A gRPC call's trailers-only failure: UNAVAILABLE (when this hop may retry app
    failures), or a peer proxy's refusal made before its app saw the call (any status)."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        response, _ = _outcome(retry_state)
        if response is None or response.status != 200 or not is_grpc(response.headers):
            return False
        code = status_in(response.headers)
        if code is None:
            return False
        if peer_never_sent(response):
            return True
        return _facts(retry_state).allowance == ALL and code in RETRYABLE_CODES


class WaitRetryAfter(wait_base):
    """The fallback's backoff, or the upstream's `Retry-After` when that is longer."""

    def __init__(self, fallback: wait_base, wall_clock: Clock = time.time) -> None:
        self.fallback = fallback
        self.wall_clock = wall_clock

    def retry_after(self, retry_state: RetryCallState) -> float | None:
        response, _ = _outcome(retry_state)
        if response is None or peer_never_sent(response):
            return None
        value = header(response, b"retry-after")
        return None if value is None else parse_retry_after(value, self.wall_clock())

    def __call__(self, retry_state: RetryCallState) -> float:
        backoff = self.fallback(retry_state)
        asked = self.retry_after(retry_state)
        return backoff if asked is None else max(backoff, asked)


class StopOnRetryAfter(stop_base):
    """The upstream asked for a longer wait than a proxy should hold a request for."""

    def __init__(self, wait: WaitRetryAfter, max_wait: float) -> None:
        self.wait = wait
        self.max_wait = max_wait

    def __call__(self, retry_state: RetryCallState) -> bool:
        asked = self.wait.retry_after(retry_state)
        return asked is not None and asked > self.max_wait


class StopOnDeadline(stop_base):
    """Too little time left, after the upcoming wait, for an attempt of usual length."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        facts = _facts(retry_state)
        if facts.deadline is None:
            return False
        left = facts.deadline - facts.now - retry_state.upcoming_sleep
        return left <= 0 or left < facts.typical


def _never_sleep(seconds: float) -> None:
    raise RuntimeError("tenacity's loop is not run on the data path; the Retry layer waits")


class RetryDecider:
    """One upstream's retry strategies, evaluated per failed attempt."""

    def __init__(self, policy: RetryPolicy, wall_clock: Clock = time.time) -> None:
        self.policy = policy
        wait = WaitRetryAfter(
            wait_random_exponential(multiplier=policy.backoff_base, max=policy.backoff_max),
            wall_clock,
        )
        self.retrying = tenacity.Retrying(
            sleep=_never_sleep,
            retry=NeverSent() | IdempotentFailure(policy.retry_statuses) | GrpcUnavailable(),
            wait=wait,
            stop=(
                stop_after_attempt(1 + policy.max_retries)
                | StopOnRetryAfter(wait, policy.max_retry_after)
                | StopOnDeadline()
            ),
        )
        # Kept apart to name the reason a retry was not made.
        self._attempts = stop_after_attempt(1 + policy.max_retries)
        self._retry_after = StopOnRetryAfter(wait, policy.max_retry_after)

    def __repr__(self) -> str:
        policy = self.policy
        return (
            f"<RetryDecider max_retries={policy.max_retries} "
            f"statuses={sorted(policy.retry_statuses)} backoff={policy.backoff_base:g}s.."
            f"{policy.backoff_max:g}s per_try={policy.per_try_timeout}>"
        )

    def start(self, facts: AttemptFacts) -> RetryCallState:
        """Call state for a request's first failed attempt."""
        return RetryCallState(self.retrying, None, (facts,), {})

    def decide(
        self,
        retry_state: RetryCallState,
        response: Response | None,
        error: BaseException | None,
    ) -> Verdict:
        """Record the latest attempt's outcome (`retry_state.attempt_number`) and judge it."""
        if error is not None:
            retry_state.set_exception((type(error), error, error.__traceback__))
        else:
            retry_state.set_result(response)
        retrying = self.retrying
        if not retrying.retry(retry_state):
            return Verdict(False, 0.0, NOT_RETRYABLE)
        delay = retrying.wait(retry_state)
        retry_state.upcoming_sleep = delay
        if retrying.stop(retry_state):
            if self._attempts(retry_state):
                return Verdict(False, delay, ATTEMPTS_EXHAUSTED)
            if self._retry_after(retry_state):
                return Verdict(False, delay, RETRY_AFTER_TOO_LONG)
            return Verdict(False, delay, DEADLINE)
        return Verdict(True, delay, "")
