"""RELIABILITY row 36: concurrency limits, and a service whose endpoints are all unhealthy.

An upstream limited to K = 4 requests in progress never works on more than 4, however many
arrive (the app counts them itself); the overflow is answered within milliseconds with
`503 bulkhead-full` and `Retry-After`, or waits in a bounded queue for at most the queue
timeout. The inbound side protects the local app the same way. When every endpoint of a
service is ejected (ejection cap 100 %), requests get an immediate `503
all-endpoints-ejected` instead of being routed into a dead host.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.resilience_live.conftest import (
    Answer,
    Gate,
    Outbound,
    assert_refusal,
    call,
    launched,
    start_outbound,
)
from tests.support.processes import MeshProcess, Sidecars, free_port, wait_until, write_yaml
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply, echo_sha256

log = logging.getLogger(__name__)

K = 4
QUEUE_TIMEOUT = 0.3
#: "Within milliseconds", with room for a loaded two-core machine.
FAST = 0.1


def unavailable(request: RecordedRequest) -> Reply:
    return Reply(status=503, body=b"down\n")


@dataclass
class Apps:
    limited: RecordingUpstream
    down_a: RecordingUpstream
    down_b: RecordingUpstream


@pytest.fixture(scope="module")
def apps() -> Iterator[Apps]:
    with (
        RecordingUpstream() as limited,
        RecordingUpstream(unavailable) as down_a,
        RecordingUpstream(unavailable) as down_b,
    ):
        yield Apps(limited, down_a, down_b)


@pytest.fixture(scope="module")
def outbound(sidecars: Sidecars, apps: Apps) -> Outbound:
    limited = [f"127.0.0.1:{apps.limited.port}"]
    return start_outbound(
        sidecars,
        "bulkheads",
        {
            "no-queue": limited,
            "short-queue": limited,
            "long-queue": limited,
            "all-down": [f"127.0.0.1:{apps.down_a.port}", f"127.0.0.1:{apps.down_b.port}"],
        },
        {
            "balance": "round_robin",
            "outbound_timeouts": {"connect": 0.5, "request": 5.0},
            "services": {
                "no-queue": {"limits": {"max_requests": K, "max_pending": 0}},
                "short-queue": {
                    "limits": {"max_requests": K, "max_pending": K},
                    "queue_timeout": QUEUE_TIMEOUT,
                },
                "long-queue": {
                    "limits": {"max_requests": K, "max_pending": 2 * K},
                    "queue_timeout": 5.0,
                },
                "all-down": {
                    "retry": {"max_retries": 0},
                    "outlier": {"max_ejection_share": 1.0},
                    # Open long enough that no probe falls inside the test.
                    "breaker": {"consecutive_failures": 2, "backoff_min": 10.0},
                },
            },
        },
    )


def assert_bulkhead_full(answer: Answer) -> None:
    assert_refusal(answer, 503, "bulkhead-full")
    assert int(answer.get("retry-after") or 0) >= 1


def test_overflow_beyond_the_limit_is_refused_at_once(outbound: Outbound, apps: Apps) -> None:
    gate = Gate(echo_sha256)
    apps.limited.reset(gate)
    port = outbound.ports["no-queue"]
    with launched([lambda: call(port, "/slow")] * (3 * K)) as launch:
        gate.wait_inside(K)
        refused = launch.wait_done(2 * K)
        log.info("no queue: refusals within %.1f ms", 1000 * max(a.elapsed for a in refused))
        for answer in refused:
            assert_bulkhead_full(answer)
            assert answer.elapsed < FAST, answer.elapsed
        assert gate.seen == K
        gate.release()
        served = [a for a in launch.answers() if a.status == 200]
    assert len(served) == K
    assert gate.peak == K
    bulkhead = outbound.resilience("no-queue")["bulkhead"]
    assert (bulkhead["peak_in_use"], bulkhead["rejected_total"]) == (K, 2 * K)


def test_queued_requests_wait_at_most_the_queue_timeout(outbound: Outbound, apps: Apps) -> None:
    gate = Gate(echo_sha256)
    apps.limited.reset(gate)
    port = outbound.ports["short-queue"]
    with launched([lambda: call(port, "/slow")] * (3 * K)) as launch:
        gate.wait_inside(K)
        refused = launch.wait_done(2 * K, timeout=QUEUE_TIMEOUT + 2)
        for answer in refused:
            assert_bulkhead_full(answer)
        waits = sorted(a.elapsed for a in refused)
        log.info("short queue: refused after %s s", [round(w, 3) for w in waits])
        # K had no room in the queue either; K waited the queue timeout and gave up.
        assert all(w < FAST for w in waits[:K]), waits
        assert all(QUEUE_TIMEOUT - 0.02 <= w <= QUEUE_TIMEOUT + 0.2 for w in waits[K:]), waits
        assert gate.seen == K
        gate.release()
        served = [a for a in launch.answers() if a.status == 200]
    assert len(served) == K
    assert gate.peak == K
    bulkhead = outbound.resilience("short-queue")["bulkhead"]
    assert (bulkhead["rejected_total"], bulkhead["timed_out_total"]) == (K, K)


def test_queued_requests_are_served_as_slots_free(outbound: Outbound, apps: Apps) -> None:
    gate = Gate(echo_sha256)
    apps.limited.reset(gate)
    port = outbound.ports["long-queue"]
    with launched([lambda: call(port, "/slow")] * (3 * K)) as launch:
        gate.wait_inside(K)
        wait_until(
            lambda: outbound.resilience("long-queue")["bulkhead"]["queued"] == 2 * K,
            5,
            "the queue to fill",
        )
        assert gate.seen == K
        gate.release()
        statuses = [a.status for a in launch.answers()]
    assert statuses.count(200) == 3 * K
    assert gate.peak <= K
    assert outbound.resilience("long-queue")["bulkhead"]["peak_in_use"] == K


class Streaming:
    """Answers at once with a head and a first chunk, then holds the rest of the body until
    released; `inside` counts the exchanges the app is still working on (head to last byte)."""

    def __init__(self, hold: float = 10.0) -> None:
        self.hold = hold
        self.opened = threading.Event()
        self._lock = threading.Lock()
        self.inside = 0
        self.peak = 0

    def __call__(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
        return Reply(body=self._body(), framing="chunked")

    def _body(self) -> Iterator[bytes]:
        try:
            yield b"first part\n"
            self.opened.wait(self.hold)
            yield b"last part\n"
        finally:
            with self._lock:
                self.inside -= 1


def test_limit_holds_while_responses_stream(outbound: Outbound, apps: Apps) -> None:
    app = Streaming()
    apps.limited.reset(app)
    port = outbound.ports["no-queue"]
    with launched([lambda: call(port, "/stream")] * K) as streams:
        wait_until(lambda: app.inside == K, 5, f"{K} responses streaming")
        with launched([lambda: call(port, "/one-more")]) as extra:
            wait_until(
                lambda: app.inside > K or bool(extra.done()), 5, "the request beyond the limit"
            )
            peak = app.peak
            app.opened.set()
            (answer,) = extra.answers()
        assert [a.status for a in streams.answers()] == [200] * K
    assert peak == K, f"the app worked on {peak} requests at once"
    assert_bulkhead_full(answer)


def test_all_endpoints_ejected_fails_fast(outbound: Outbound, apps: Apps) -> None:
    port = outbound.ports["all-down"]
    for i in range(10):  # round robin: two failures each eject both
        if outbound.resilience("all-down")["outlier"]["ejected"] == 2:
            break
        assert call(port, f"/fail/{i}").status == 503
    outlier = outbound.resilience("all-down")["outlier"]
    assert outlier["ejected"] == 2
    assert {b["state"] for b in outlier["endpoints"].values()} == {"open"}
    hits = len(apps.down_a.requests) + len(apps.down_b.requests)
    for i in range(5):
        answer = call(port, f"/ejected/{i}")
        assert_refusal(answer, 503, "all-endpoints-ejected")
        assert answer.elapsed < FAST, answer.elapsed
        # Until the next probe: open for 5 to 10 s (backoff 10 s, jitter 50 %).
        assert 4 <= int(answer.get("retry-after") or 0) <= 10, answer.get("retry-after")
    assert len(apps.down_a.requests) + len(apps.down_b.requests) == hits


@pytest.fixture(scope="module")
def inbound(sidecars: Sidecars, apps: Apps) -> tuple[MeshProcess, int]:
    listen = free_port()
    config = write_yaml(
        sidecars.log_dir / "inbound-bulkhead.yaml",
        {
            "service": "app",
            "app_port": apps.limited.port,
            "listen": f"127.0.0.1:{listen}",
            "inbound": {"bulkhead": {"max_concurrent": 2, "max_queued": 0}},
        },
    )
    return sidecars.start("--config", str(config), name="inbound-bulkhead"), listen


def test_inbound_bulkhead_protects_the_app(inbound: tuple[MeshProcess, int], apps: Apps) -> None:
    sidecar, port = inbound
    gate = Gate(echo_sha256)
    apps.limited.reset(gate)
    with launched([lambda: call(port, "/work")] * 3) as launch:
        gate.wait_inside(2)
        (refused,) = launch.wait_done(1)
        assert_bulkhead_full(refused)
        assert refused.elapsed < FAST, refused.elapsed
        assert gate.seen == 2, "the third request never reaches the app"
        gate.release()
        statuses = sorted(a.status or 0 for a in launch.answers())
    assert statuses == [200, 200, 503]
    assert gate.peak == 2
    bulkhead = sidecar.admin("/clusters")["<local app>"]["resilience"]["bulkhead"]
    assert (bulkhead["peak_in_use"], bulkhead["rejected_total"]) == (2, 1)
