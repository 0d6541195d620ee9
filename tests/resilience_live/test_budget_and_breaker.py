"""RELIABILITY rows 34 and 35: a failing upstream gets neither a retry storm nor traffic.

Row 34: an upstream that answers every request with 503, under 1,000 requests from 20
concurrent clients. With the endpoint breaker off, only the retry budget holds retries
back: the upstream sees at most 1.2 x the requests plus the budget's floor, and `/clusters`
counts the retries it refused. With the breaker on, the upstream is spared almost all of it
and the clients get `circuit-open`.

Row 35: five 503s in a row open the endpoint's breaker; while open, requests get a fast
`503 circuit-open` with `Retry-After` and none reaches the upstream; after the backoff
exactly one request probes, however many arrive together; a failed probe opens it again for
longer; a successful one closes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.resilience_live.conftest import (
    Gate,
    Outbound,
    assert_refusal,
    call,
    launched,
    start_outbound,
)
from tests.support.processes import Sidecars, wait_until
from tests.support.rawclient import HttpConnection
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply

log = logging.getLogger(__name__)

REQUESTS = 1000
CLIENTS = 20
MAX_RETRIES = 2
#: The budget: retries <= RATIO x requests + MIN_PER_S x TTL within TTL seconds (the run
#: takes a few seconds, well inside one window).
RATIO, MIN_PER_S, TTL = 0.2, 0.5, 30.0
FLOOR = MIN_PER_S * TTL
#: Row 35's breaker: its first open time, doubled after a failed probe (no jitter).
BACKOFF = 0.6
FAST = 0.1


def unavailable(request: RecordedRequest) -> Reply:
    return Reply(status=503, body=b"down\n")


@dataclass
class Upstreams:
    budget_only: RecordingUpstream
    with_breaker: RecordingUpstream
    flappy: RecordingUpstream


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    with (
        RecordingUpstream(unavailable) as budget_only,
        RecordingUpstream(unavailable) as with_breaker,
        RecordingUpstream(unavailable) as flappy,
    ):
        yield Upstreams(budget_only, with_breaker, flappy)


@pytest.fixture(scope="module")
def outbound(sidecars: Sidecars, upstreams: Upstreams) -> Outbound:
    retry = {"max_retries": MAX_RETRIES, "backoff_base": 0.001, "backoff_max": 0.002}
    budget = {"ratio": RATIO, "min_per_s": MIN_PER_S, "ttl": TTL}
    # Envoy's cap of 3 retries in flight would hold retries back before the budget does.
    limits = {"max_retries": 1000}
    return start_outbound(
        sidecars,
        "budget-breaker",
        {
            "budget-only": [f"127.0.0.1:{upstreams.budget_only.port}"],
            "with-breaker": [f"127.0.0.1:{upstreams.with_breaker.port}"],
            "flappy": [f"127.0.0.1:{upstreams.flappy.port}"],
        },
        {
            "outbound_timeouts": {"connect": 0.5, "request": 5.0},
            "resilience": {"retry": retry, "budget": budget, "limits": limits},
            "services": {
                "budget-only": {"outlier": {"enabled": False}},
                "flappy": {
                    "retry": {"max_retries": 0},
                    "breaker": {
                        "consecutive_failures": 5,
                        "backoff_min": BACKOFF,
                        "backoff_max": 8 * BACKOFF,
                        "jitter": 0.0,
                    },
                },
            },
        },
    )


def hammer(port: int, total: int, clients: int) -> Counter[tuple[int, str]]:
    """`total` GETs from `clients` keep-alive clients; counts of (status, x-mesh-error)."""
    outcomes: Counter[tuple[int, str]] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(n: int) -> None:
        start.wait(10)
        conn = HttpConnection(port, timeout=10)
        try:
            for i in range(total // clients):
                conn.request("GET", f"/c{n}/{i}")
                response = conn.read_response()
                with lock:
                    outcomes[response.status, response.get("x-mesh-error") or ""] += 1
                if response.get("connection") == "close":
                    conn.close()
                    conn = HttpConnection(port, timeout=10)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(outcomes.values()) == total, outcomes
    return outcomes


def test_budget_caps_retries_to_a_failing_upstream(
    outbound: Outbound, upstreams: Upstreams
) -> None:
    began = time.monotonic()
    outcomes = hammer(outbound.ports["budget-only"], REQUESTS, CLIENTS)
    elapsed = time.monotonic() - began
    attempts = len(upstreams.budget_only.requests)
    stats = outbound.resilience("budget-only")["retry"]
    log.info("budget only: %d attempts for %d requests in %.2fs", attempts, REQUESTS, elapsed)
    assert elapsed < TTL, "the run must fit in one budget window for the bound below"
    assert outcomes == {(503, ""): REQUESTS}, "the upstream's own 503 goes back"
    assert REQUESTS < attempts <= REQUESTS * (1 + RATIO) + FLOOR
    assert stats["retries_total"] == attempts - REQUESTS
    assert stats["not_retried_total"].get("retry-budget-exhausted", 0) > 0, stats
    assert stats["budget"]["refused_total"] > 0


def test_breaker_spares_a_failing_upstream(outbound: Outbound, upstreams: Upstreams) -> None:
    began = time.monotonic()
    outcomes = hammer(outbound.ports["with-breaker"], REQUESTS, CLIENTS)
    elapsed = time.monotonic() - began
    attempts = len(upstreams.with_breaker.requests)
    log.info("with breaker: %d attempts, %s in %.2fs", attempts, dict(outcomes), elapsed)
    assert set(outcomes) <= {(503, ""), (503, "circuit-open")}, outcomes
    assert outcomes[503, "circuit-open"] > REQUESTS // 2
    assert attempts < REQUESTS // 10


def breaker_state(outbound: Outbound, upstream: RecordingUpstream) -> dict[str, object]:
    return outbound.breaker("flappy", f"127.0.0.1:{upstream.port}")


def probe_with(
    outbound: Outbound, upstream: RecordingUpstream, reply: Reply, arrivals: int = 5
) -> list[int | None]:
    """Once the breaker is half-open, `arrivals` requests at once; the upstream holds
    whatever reaches it until all the others were answered, then answers `reply`."""
    wait_until(
        lambda: breaker_state(outbound, upstream)["state"] == "half-open",
        4 * BACKOFF,
        "the breaker to let a probe through",
    )
    gate = Gate(lambda req: reply)
    upstream.reset(gate)
    port = outbound.ports["flappy"]
    with launched([lambda: call(port, "/probe")] * arrivals) as launch:
        gate.wait_inside(1)
        others = launch.wait_done(arrivals - 1)
        for answer in others:
            assert_refusal(answer, 503, "circuit-open")
            assert answer.elapsed < FAST, answer.elapsed
        state = breaker_state(outbound, upstream)
        assert (state["state"], state["probe_in_flight"]) == ("half-open", True)
        assert gate.seen == 1, "exactly one probe reaches the upstream"
        gate.release()
        statuses = [a.status for a in launch.answers()]
    assert len(upstream.requests) == 1
    return statuses


def test_breaker_opens_probes_once_and_closes(outbound: Outbound, upstreams: Upstreams) -> None:
    upstream = upstreams.flappy
    port = outbound.ports["flappy"]
    upstream.reset(unavailable)
    assert [call(port, f"/fail/{i}").status for i in range(5)] == [503] * 5
    state = breaker_state(outbound, upstream)
    assert (state["state"], state["reason"]) == ("open", "5 consecutive failures")
    first_wait = state["time_to_probe"]
    assert isinstance(first_wait, float) and 0 < first_wait <= BACKOFF

    # Open: fast refusals that never reach the upstream, with a time to come back.
    for i in range(5):
        answer = call(port, f"/open/{i}")
        assert_refusal(answer, 503, "circuit-open")
        assert answer.elapsed < FAST, answer.elapsed
        assert answer.get("retry-after") == "1", "seconds to the probe, rounded up"
    assert len(upstream.requests) == 5

    # Half-open: one probe among five arrivals; it fails, so the breaker opens for longer.
    statuses = probe_with(outbound, upstream, Reply(status=503, body=b"still down\n"))
    assert sorted(statuses, key=str) == [503] * 5
    state = breaker_state(outbound, upstream)
    assert (state["state"], state["reason"]) == ("open", "probe failed")
    second_wait = state["time_to_probe"]
    assert isinstance(second_wait, float) and second_wait > BACKOFF >= first_wait
    assert state["times_ejected"] == 2

    # Fixed: the next probe succeeds and closes it; traffic flows again.
    statuses = probe_with(outbound, upstream, Reply(body=b"ok\n"))
    assert sorted(statuses, key=str) == [200] + [503] * 4
    state = breaker_state(outbound, upstream)
    assert (state["state"], state["reason"]) == ("closed", "probe succeeded")
    upstream.reset()
    assert [call(port, f"/ok/{i}").status for i in range(10)] == [200] * 10
    assert len(upstream.requests) == 10
