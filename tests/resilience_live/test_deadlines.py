"""RELIABILITY row 33: an upstream that answers in 5 s, behind a 1 s deadline.

Each attempt has its own limit (`per_try_timeout` 0.3 s); a GET is tried again until the
attempts or the overall deadline run out, and the client gets `504 upstream-timeout` at the
deadline, not later. A POST is not tried again after its attempt timed out (the app may
still be working on it). The same limits hold when the time goes into a connect that never
completes (an iptables DROP in a network namespace).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.resilience_live.conftest import Outbound, assert_refusal, call, start_outbound
from tests.support.netns import network_namespace
from tests.support.processes import Sidecars
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply

log = logging.getLogger(__name__)

DEADLINE = 1.0
PER_TRY = 0.3
MAX_RETRIES = 3
#: Scheduling slack on a loaded two-core machine.
EPSILON = 0.15


def five_seconds(request: RecordedRequest) -> Reply:
    return Reply(body=b"late", delay=5.0)


@pytest.fixture(scope="module")
def slow() -> Iterator[RecordingUpstream]:
    with RecordingUpstream(five_seconds) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def outbound(sidecars: Sidecars, slow: RecordingUpstream) -> Outbound:
    return start_outbound(
        sidecars,
        "deadlines",
        {"slow": [f"127.0.0.1:{slow.port}"]},
        {
            "outbound_timeouts": {"connect": 0.5, "request": 10.0},
            "services": {
                "slow": {
                    "timeouts": {"request": DEADLINE},
                    "retry": {
                        "max_retries": MAX_RETRIES,
                        "per_try_timeout": PER_TRY,
                        "backoff_base": 0.005,
                        "backoff_max": 0.02,
                    },
                    # Timeouts would trip the breaker; this test is about the deadlines.
                    "outlier": {"enabled": False},
                }
            },
        },
    )


def test_slow_get_ends_with_504_at_the_deadline(
    outbound: Outbound, slow: RecordingUpstream
) -> None:
    slow.reset(five_seconds)
    answer = call(outbound.ports["slow"], "/slow")
    log.info("slow GET: %d attempts, answered in %.3fs", len(slow.requests), answer.elapsed)
    assert_refusal(answer, 504, "upstream-timeout")
    assert DEADLINE - 0.05 <= answer.elapsed <= DEADLINE + EPSILON, answer.elapsed
    # Per-try timeouts made retries, bounded by the attempts allowed.
    assert 2 <= len(slow.requests) <= 1 + MAX_RETRIES
    assert outbound.resilience("slow")["retry"]["retries_total"] >= 1


def test_slow_post_times_out_once(outbound: Outbound, slow: RecordingUpstream) -> None:
    slow.reset(five_seconds)
    answer = call(outbound.ports["slow"], "/slow", "POST", b"order=1")
    log.info("slow POST: answered in %.3fs", answer.elapsed)
    assert_refusal(answer, 504, "upstream-timeout")
    assert PER_TRY - 0.05 <= answer.elapsed <= PER_TRY + EPSILON, answer.elapsed
    assert [r.body for r in slow.requests] == [b"order=1"]


# -- the same deadlines while the connect itself hangs (iptables DROP in a namespace) ----------

#: Both above the limits under test, so that only those limits can end the attempts early.
CONNECT_TIMEOUT = 1.0
TRY_CONNECT_TIMEOUT = 0.6
SHORT_DEADLINE = 0.4


@pytest.fixture(scope="module")
def blackholed(sidecars: Sidecars) -> Iterator[Outbound]:
    with network_namespace("dl") as ns:
        ns.blackhole(8080)
        address = f"{ns.address}:8080"
        outbound = start_outbound(
            sidecars,
            "deadlines-netns",
            {"short-deadline": [address], "short-tries": [address]},
            {
                "outbound_timeouts": {"connect": CONNECT_TIMEOUT, "request": 10.0},
                "resilience": {
                    "retry": {"backoff_base": 0.005, "backoff_max": 0.02},
                    "outlier": {"enabled": False},
                },
                "services": {
                    "short-deadline": {
                        "timeouts": {"request": SHORT_DEADLINE},
                        "retry": {"max_retries": 0},
                    },
                    "short-tries": {
                        "timeouts": {"connect": TRY_CONNECT_TIMEOUT, "request": 3 * DEADLINE},
                        "retry": {"max_retries": 2, "per_try_timeout": PER_TRY},
                    },
                },
            },
        )
        yield outbound
        outbound.sidecar.stop()


def test_hanging_connect_ends_at_the_deadline(blackholed: Outbound) -> None:
    answer = call(blackholed.ports["short-deadline"], "/hangs")
    log.info("hanging connect, %.1fs deadline: %.3fs", SHORT_DEADLINE, answer.elapsed)
    assert answer.elapsed <= SHORT_DEADLINE + EPSILON, (answer.elapsed, answer.body)
    assert_refusal(answer, 504, "upstream-timeout")


def test_hanging_connect_counts_against_the_per_try_timeout(blackholed: Outbound) -> None:
    answer = call(blackholed.ports["short-tries"], "/hangs")
    log.info("hanging connect, %.1fs per try: %.3fs", PER_TRY, answer.elapsed)
    assert answer.elapsed <= 3 * PER_TRY + EPSILON, (answer.elapsed, answer.body)
    assert_refusal(answer, 504, "upstream-timeout")
