"""Retry decisions on one failed attempt: which failures, which methods, how long to wait.

RELIABILITY.md row 31: a POST is retried only when it certainly never reached the app;
idempotent methods also on a reset before the head and on the policy's statuses.
"""

from __future__ import annotations

import email.utils

import pytest

from mesh.errors import (
    AllEndpointsEjected,
    BadRequest,
    BulkheadFull,
    PeerIdentityMismatch,
    UpstreamConnectFailed,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamTlsFailed,
)
from mesh.http1.message import Headers, Response
from mesh.resilience.hop import ALL, NEVER_SENT_ONLY
from mesh.resilience.policy import RetryPolicy
from mesh.resilience.retry import (
    ATTEMPTS_EXHAUSTED,
    DEADLINE,
    NEVER_SENT_REASONS,
    NOT_RETRYABLE,
    RETRY_AFTER_TOO_LONG,
    AttemptFacts,
    RetryDecider,
    Verdict,
    parse_retry_after,
)

pytestmark = pytest.mark.timeout(10)

WALL = 1_700_000_000.0


def judge(
    outcome: Response | BaseException,
    method: bytes = b"GET",
    policy: RetryPolicy | None = None,
    allowance: int = ALL,
    deadline: float | None = None,
    now: float = 0.0,
    typical: float = 0.0,
    failures: int = 1,
) -> Verdict:
    """The verdict on the `failures`-th failed attempt of one request."""
    decider = RetryDecider(policy or RetryPolicy(max_retries=5), wall_clock=lambda: WALL)
    facts = AttemptFacts(method, allowance, deadline, typical, now)
    state = decider.start(facts)
    for _ in range(failures - 1):
        state.prepare_for_next_attempt()
    response = outcome if isinstance(outcome, Response) else None
    error = outcome if isinstance(outcome, BaseException) else None
    return decider.decide(state, response, error)


def status(code: int, headers: Headers | None = None) -> Response:
    return Response(code, list(headers or []))


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"])
def test_idempotent_methods_retry_resets_timeouts_and_gateway_errors(method: bytes) -> None:
    for outcome in (UpstreamReset(), UpstreamTimeout(), status(502), status(503), status(504)):
        assert judge(outcome, method).retry, (method, outcome)


@pytest.mark.parametrize("method", [b"POST", b"PATCH"])
def test_post_and_patch_are_not_retried_once_the_app_may_have_acted(method: bytes) -> None:
    for outcome in (UpstreamReset(), UpstreamTimeout(), status(502), status(503), status(504)):
        verdict = judge(outcome, method)
        assert not verdict.retry and verdict.reason == NOT_RETRYABLE, (method, outcome)


@pytest.mark.parametrize("method", [b"GET", b"POST", b"PATCH"])
def test_any_method_is_retried_when_the_request_never_left(method: bytes) -> None:
    assert judge(UpstreamConnectFailed("refused"), method).retry
    assert judge(UpstreamTlsFailed("plaintext peer"), method).retry
    assert judge(PeerIdentityMismatch("spiffe://x/ns/default/dc/dc1/svc/other"), method).retry


def test_a_peers_never_sent_words_are_this_trees_never_sent_errors() -> None:
    assert {"draining", "bulkhead-full", "no-endpoints", "circuit-open"} <= NEVER_SENT_REASONS
    assert "upstream-reset" not in NEVER_SENT_REASONS
    assert "upstream-timeout" not in NEVER_SENT_REASONS


@pytest.mark.parametrize(
    "reason", [b"draining", b"bulkhead-full", b"upstream-connect-failed", b"circuit-open"]
)
def test_a_peer_proxys_never_sent_refusal_is_retried_for_any_method(reason: bytes) -> None:
    refusal = status(503, [(b"x-mesh-error", reason), (b"retry-after", b"1")])
    verdict = judge(refusal, b"POST")
    assert verdict.retry
    assert verdict.delay <= 0.025, "its Retry-After speaks for that endpoint only"


def test_a_peer_refusal_that_may_have_reached_the_app_is_not_never_sent() -> None:
    assert not judge(status(502, [(b"x-mesh-error", b"upstream-reset")]), b"POST").retry
    assert judge(status(502, [(b"x-mesh-error", b"upstream-reset")]), b"GET").retry


def test_app_errors_and_this_hops_own_refusals_are_not_retried() -> None:
    assert not judge(status(500)).retry, "500: the app's own failure repeats"
    assert not judge(status(404)).retry
    assert not judge(UpstreamProtocolError()).retry
    assert not judge(BadRequest("client body broke")).retry
    assert not judge(BulkheadFull(), b"GET").retry, "this hop's limit: retrying adds load"
    assert not judge(AllEndpointsEjected(), b"GET").retry


def test_configured_statuses() -> None:
    policy = RetryPolicy(max_retries=2, retry_statuses=frozenset({500}))
    assert judge(status(500), policy=policy).retry
    assert not judge(status(503), policy=policy).retry


def test_attempts_are_capped_by_max_retries() -> None:
    policy = RetryPolicy(max_retries=2)
    assert judge(status(503), policy=policy, failures=1).retry
    assert judge(status(503), policy=policy, failures=2).retry
    verdict = judge(status(503), policy=policy, failures=3)
    assert not verdict.retry and verdict.reason == ATTEMPTS_EXHAUSTED
    assert not judge(status(503), policy=RetryPolicy(max_retries=0)).retry


def test_backoff_is_full_jitter_exponential_capped() -> None:
    for failures, ceiling in [(1, 0.025), (2, 0.05), (3, 0.1), (4, 0.2), (5, 0.25)]:
        for _ in range(50):
            verdict = judge(status(503), failures=failures, policy=RetryPolicy(max_retries=9))
            assert 0 <= verdict.delay <= ceiling


def test_retry_after_seconds_is_the_least_wait() -> None:
    verdict = judge(status(503, [(b"retry-after", b"1")]))
    assert verdict.retry and verdict.delay == 1.0


def test_retry_after_as_http_date() -> None:
    when = email.utils.formatdate(WALL + 1, usegmt=True).encode()
    verdict = judge(status(503, [(b"retry-after", when)]))
    assert verdict.retry and verdict.delay == pytest.approx(1.0)


def test_retry_after_beyond_the_cap_means_no_retry() -> None:
    verdict = judge(status(503, [(b"retry-after", b"5")]))
    assert not verdict.retry and verdict.reason == RETRY_AFTER_TOO_LONG


def test_retry_after_beyond_the_deadline_means_no_retry() -> None:
    verdict = judge(status(503, [(b"retry-after", b"1")]), deadline=0.5)
    assert not verdict.retry and verdict.reason == DEADLINE


def test_no_retry_without_time_for_an_attempt_of_usual_length() -> None:
    assert judge(UpstreamReset(), deadline=1.0, typical=0.2).retry
    verdict = judge(UpstreamReset(), deadline=1.0, now=0.9, typical=0.2)
    assert not verdict.retry and verdict.reason == DEADLINE
    passed = judge(UpstreamTimeout(), deadline=1.0, now=1.0)
    assert not passed.retry and passed.reason == DEADLINE


def test_deferring_to_the_caller_keeps_only_never_sent_retries() -> None:
    assert not judge(status(503), allowance=NEVER_SENT_ONLY).retry
    assert not judge(UpstreamReset(), allowance=NEVER_SENT_ONLY).retry
    assert judge(UpstreamConnectFailed(), allowance=NEVER_SENT_ONLY).retry


def test_parse_retry_after() -> None:
    assert parse_retry_after(b"0", WALL) == 0.0
    assert parse_retry_after(b" 120 ", WALL) == 120.0
    assert parse_retry_after(b"-1", WALL) is None
    assert parse_retry_after(b"soon", WALL) is None
    assert parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT", WALL) == 0.0
    later = email.utils.formatdate(WALL + 30, usegmt=True).encode()
    assert parse_retry_after(later, WALL) == pytest.approx(30.0)


def test_tenacity_is_never_asked_to_sleep() -> None:
    decider = RetryDecider(RetryPolicy())
    with pytest.raises(RuntimeError, match="not run on the data path"):
        decider.retrying.sleep(1.0)


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="5xx"):
        RetryPolicy(retry_statuses=frozenset({429}))
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="per_try_timeout"):
        RetryPolicy(per_try_timeout=0)
