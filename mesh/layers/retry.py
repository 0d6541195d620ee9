"""Retries a failed attempt when it is safe, useful and affordable.

Safe: `mesh.resilience.retry` says which failures may be retried for which methods, and
only bodies buffered whole (at most 64 KiB) are sent again. Useful: each retry leaves
`request.endpoint` at the endpoint just tried, which a health-aware balancer avoids, and
none is made without time left for an attempt of usual length. Affordable: every request
deposits into the upstream's `RetryBudget` and every retry withdraws, before its backoff;
an optional `ResourceGauge` caps retries in flight (Envoy's max_retries).

Each attempt gets its own deadline (`per_try_timeout`, within the overall one and within
the caller's `x-mesh-deadline-ms`) and carries the cross-hop headers (`mesh.resilience.hop`).
A request that cannot be retried (no retries allowed, caller already retried, body not
replayable) passes through with one deposit and one header scan. A gRPC answer of HTTP 200
whose head carries a failing `grpc-status` counts as a failed attempt (`mesh.grpc.outcome`).

When no retry is made, the client gets the last attempt's own outcome: the upstream's
response, or the error of that attempt. A proxy-made error that a refused budget left
standing says so in its detail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from tenacity import RetryCallState

from mesh.errors import MeshError, RetryBudgetExhausted
from mesh.grpc.deadline import restamp
from mesh.grpc.outcome import retry_candidate
from mesh.http1.body import Body
from mesh.http1.message import Request, Response
from mesh.resilience import hop
from mesh.resilience.budget import RetryBudget
from mesh.resilience.clock import Clock
from mesh.resilience.latency import AttemptLatency
from mesh.resilience.limits import ResourceGauge
from mesh.resilience.policy import RetryPolicy
from mesh.resilience.retry import AttemptFacts, RetryDecider
from mesh.stack import Handler

Sleep = Callable[[float], Awaitable[None]]

RETRY_OVERFLOW: Final = "retry-overflow"
CALLER_RETRIED: Final = "caller-retried"
NOT_REPLAYABLE: Final = "body-not-replayable"


class Retry(Handler):
    def __init__(
        self,
        inner: Handler,
        policy: RetryPolicy,
        budget: RetryBudget,
        *,
        latency: AttemptLatency | None = None,
        retries_gauge: ResourceGauge | None = None,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        wall_clock: Clock = time.time,
    ) -> None:
        self.inner = inner
        self.policy = policy
        # Native copies of the (interpreted) policy's fields read on every request.
        self._max_retries = policy.max_retries
        self._per_try = policy.per_try_timeout
        self._defer = policy.defer_to_caller
        self.budget = budget
        self.latency = latency or AttemptLatency()
        self.retries_gauge = retries_gauge
        self.decider = RetryDecider(policy, wall_clock)
        self._clock = clock or asyncio.get_event_loop().time
        self._sleep: Sleep = sleep or asyncio.sleep
        self.requests = 0
        self.retries = 0
        #: Why requests were not retried, by reason: a failed attempt left standing
        #: (`mesh.resilience.retry`'s words, the budget's, `retry-overflow`), or a request that
        #: could not be retried at all (`caller-retried`, `body-not-replayable`).
        self.not_retried: dict[str, int] = {}

    async def handle(self, request: Request) -> Response:
        clock = self._clock
        started = clock()
        self.requests += 1
        self.budget.deposit(started)
        caller = hop.read_caller(request.headers)
        allowance = hop.ALL if caller is None else hop.allowance(caller, self._defer)
        if allowance == hop.NONE or self._max_retries == 0:
            if allowance == hop.NONE:
                self._count(CALLER_RETRIED)
            return await self.inner.handle(request)
        replay: bytes | None = None
        body = request.body
        if body is not None:
            replay = await self._buffer(request, body)
            if replay is None:
                self._count(NOT_REPLAYABLE)
                return await self.inner.handle(request)
            started = clock()

        per_try = self._per_try
        deadline = request.deadline
        if caller is not None and caller.deadline_ms is not None:
            # The caller gives up by then; our answer after it would go nowhere.
            theirs = started + caller.deadline_ms / 1000
            if deadline is None or theirs < deadline:
                deadline = theirs
        chain_attempt = 0 if caller is None else caller.attempt
        retry_state: RetryCallState | None = None
        facts: AttemptFacts | None = None
        gauge = self.retries_gauge
        holding_gauge = False
        attempt = 1
        try:
            while True:
                try_deadline = deadline
                if per_try is not None and (deadline is None or started + per_try < deadline):
                    try_deadline = started + per_try
                hop.stamp(
                    request.headers,
                    attempt if attempt > chain_attempt else chain_attempt,
                    None if try_deadline is None else int((try_deadline - started) * 1000),
                    caller is None and attempt == 1,
                )
                if try_deadline is not None and request.version == b"2":
                    restamp(request, try_deadline - clock())
                if replay is not None:
                    request.body = Body.complete(replay)
                request.attempts = attempt
                request.deadline = try_deadline
                response: Response | None = None
                error: MeshError | None = None
                try:
                    response = await self.inner.handle(request)
                except MeshError as exc:
                    error = exc
                finally:
                    request.deadline = deadline
                    if holding_gauge and gauge is not None:
                        holding_gauge = False
                        gauge.release()
                if (
                    response is not None
                    and response.status < 500
                    and (request.version != b"2" or not retry_candidate(response))
                ):
                    self.latency.observe(clock() - started)
                    return response

                # A failed attempt: the decision (and its allocations) happen only here.
                if facts is None or retry_state is None:
                    facts = AttemptFacts(request.method, allowance, deadline)
                    retry_state = self.decider.start(facts)
                else:
                    retry_state.prepare_for_next_attempt()
                facts.now = clock()
                facts.typical = self.latency.seconds
                verdict = self.decider.decide(retry_state, response, error)
                reason = verdict.reason
                if verdict.retry:
                    if not self.budget.try_withdraw():
                        reason = RetryBudgetExhausted.reason
                    elif gauge is not None and not gauge.try_acquire():
                        reason = RETRY_OVERFLOW
                    else:
                        holding_gauge = gauge is not None
                if reason:
                    self._count(reason)
                    if error is not None:
                        if reason == RetryBudgetExhausted.reason:
                            error.detail += f" (not retried: {reason})"
                        raise error
                    assert response is not None
                    return response

                self.retries += 1
                if response is not None and response.body is not None:
                    response.body.abandon()  # the failed answer is not forwarded
                if verdict.delay > 0:
                    await self._sleep(verdict.delay)
                attempt += 1
                started = clock()
        finally:
            if holding_gauge and gauge is not None:
                gauge.release()

    async def _buffer(self, request: Request, body: Body) -> bytes | None:
        """The whole body, when it is small enough to keep for a second send."""
        limit = self.policy.max_replay_body
        length = request.content_length
        if length is not None:
            return await body.read_all(limit) if length <= limit else None
        # Chunked: only when it has all arrived already; waiting for more could mean holding
        # a body that then turns out too large to replay, and too late to stream.
        if not body.at_eof and request.version == b"2":
            # HTTP/2 DATA follows the HEADERS that started this request, often in the same
            # read (a unary gRPC call): let that read finish before judging.
            await self._sleep(0)
        if body.at_eof and body.received <= limit:
            return body.take_all()
        return None

    def _count(self, reason: str) -> None:
        self.not_retried[reason] = self.not_retried.get(reason, 0) + 1

    def statistics(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests,
            "retries_total": self.retries,
            "not_retried_total": dict(self.not_retried),
            "budget": self.budget.statistics(),
            "typical_attempt": self.latency.statistics(),
            "retries_in_flight": (
                None if self.retries_gauge is None else self.retries_gauge.statistics()
            ),
        }

    def __repr__(self) -> str:
        return (
            f"<Retry max_retries={self.policy.max_retries} requests={self.requests} "
            f"retries={self.retries} {self.budget!r}>"
        )
