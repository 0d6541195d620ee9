"""Consul's blocking-query rules as pure parts: the index to send, the rate limit, the backoff.

No event loop and no sleeps: the token bucket runs on a manual clock.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery.blocking import Backoff, BlockingIndex, TokenBucket, default_backoff
from tests.support.fakes import ManualClock

pytestmark = pytest.mark.timeout(30)


def test_first_query_and_queries_after_a_reset_send_no_index() -> None:
    index = BlockingIndex()
    assert index.to_send() is None
    index.advance(42)
    assert index.to_send() == 42
    # Repeating is "nothing changed": the same index goes out again.
    index.advance(42)
    assert index.to_send() == 42
    index.advance(50)
    assert index.to_send() == 50
    # Backwards: the servers' state was rebuilt; start over with a non-blocking query.
    assert index.went_backwards(7)
    index.advance(7)
    assert index.to_send() is None
    index.advance(7)
    assert index.to_send() == 7


def test_an_index_below_one_is_never_sent() -> None:
    index = BlockingIndex()
    index.advance(0)
    assert index.to_send() == 1
    index.advance(-5)
    # -5 < 1 went backwards: reset, never a negative or zero index on the wire.
    assert index.to_send() is None


@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63), max_size=50))
def test_the_sent_index_is_none_or_at_least_one(returned: list[int]) -> None:
    index = BlockingIndex()
    for value in returned:
        index.advance(value)
        sent = index.to_send()
        assert sent is None or sent >= 1


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=1.0, burst=2, clock=clock)
    assert bucket.take() == 0
    assert bucket.take() == 0
    # The third query waits a full token, the fourth queues behind it.
    assert bucket.take() == pytest.approx(1.0)
    assert bucket.take() == pytest.approx(2.0)
    clock.advance(10)
    # Idle time refills up to the burst, never beyond.
    assert bucket.take() == 0
    assert bucket.take() == 0
    assert bucket.take() == pytest.approx(1.0)


@settings(max_examples=200)
@given(
    st.lists(st.floats(min_value=0, max_value=3, allow_nan=False), min_size=1, max_size=200),
    st.floats(min_value=0.1, max_value=20),
    st.integers(min_value=1, max_value=5),
)
def test_token_bucket_never_lets_more_than_burst_plus_rate_through(
    gaps: list[float], rate: float, burst: int
) -> None:
    """However eager the caller (gaps between attempts), queries in any window of T seconds
    number at most burst + rate * T."""
    clock = ManualClock(0.0)
    bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
    sent: list[float] = []
    for gap in gaps:
        clock.advance(gap)
        delay = bucket.take()
        clock.advance(delay)  # the caller sleeps as told, then sends
        sent.append(clock())
    for i, start in enumerate(sent):
        for j in range(i, len(sent)):
            window = sent[j] - start
            assert j - i + 1 <= burst + rate * window + 1e-6


def test_token_bucket_refuses_a_useless_configuration() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=2)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0)


def test_backoff_is_jittered_exponential_and_resets_on_success() -> None:
    backoff = Backoff(default_backoff(max_wait=4.0))
    waits = [backoff.failed() for _ in range(8)]
    # tenacity's full jitter: the n-th wait is random within [0, min(4, 0.5 * 2**(n-1))].
    for n, wait in enumerate(waits, start=1):
        assert 0 <= wait <= min(4.0, 0.5 * 2 ** (n - 1))
    assert backoff.failures == 8
    # Random, not a fixed schedule: many peers failing together do not retry in lockstep.
    assert len({round(w, 6) for w in waits}) > 1
    backoff.succeeded()
    assert backoff.failures == 0
    assert backoff.failed() <= 0.5
