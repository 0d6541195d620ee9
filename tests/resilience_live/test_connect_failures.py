"""RELIABILITY row 30: endpoints that refuse connections or swallow them.

Three ways an endpoint cannot be reached: a closed loopback port (the kernel refuses), an
iptables `REJECT --reject-with tcp-reset` in a network namespace (the firewall refuses), and
an iptables `DROP` there (a blackhole: the SYN goes unanswered until the connect timeout).
Alone, each makes a fast `503 upstream-connect-failed` (the blackhole after the connect
timeout once per attempt); next to a healthy endpoint every request succeeds, POSTs
included, because a connect failure certainly never reached the app and is retried on
another endpoint for any method, and each POST reaches the healthy app exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.resilience_live.conftest import (
    Outbound,
    assert_refusal,
    call,
    start_outbound,
)
from tests.support.netns import network_namespace
from tests.support.processes import Sidecars, free_port
from tests.support.upstream import RecordingUpstream

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 0.25
MAX_RETRIES = 1
ATTEMPTS = 1 + MAX_RETRIES
#: The namespace side has no listener; these ports only carry the iptables rules.
REJECT_PORT, DROP_PORT = 8081, 8080


def config() -> dict[str, object]:
    return {
        "balance": "round_robin",
        "outbound_timeouts": {"connect": CONNECT_TIMEOUT, "request": 5.0},
        "resilience": {
            "retry": {"max_retries": MAX_RETRIES, "backoff_base": 0.005, "backoff_max": 0.02}
        },
        # Alone, an endpoint shows the connect path itself, not its breaker answering.
        "services": {
            "refused": {"outlier": {"enabled": False}},
            "rejected": {"outlier": {"enabled": False}},
            "blackholed": {"outlier": {"enabled": False}},
        },
    }


@pytest.fixture(scope="module")
def healthy() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def loopback(sidecars: Sidecars, healthy: RecordingUpstream) -> Outbound:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there: the kernel refuses
    services = {"refused": [closed], "mixed-refused": [closed, f"127.0.0.1:{healthy.port}"]}
    return start_outbound(sidecars, "connect-loopback", services, config())


@pytest.fixture(scope="module")
def namespaced(sidecars: Sidecars, healthy: RecordingUpstream) -> Iterator[Outbound]:
    with network_namespace("up") as ns:
        ns.refuse(REJECT_PORT)
        ns.blackhole(DROP_PORT)
        rejected, blackholed = f"{ns.address}:{REJECT_PORT}", f"{ns.address}:{DROP_PORT}"
        good = f"127.0.0.1:{healthy.port}"
        services = {
            "rejected": [rejected],
            "blackholed": [blackholed],
            "mixed-rejected": [rejected, good],
            "mixed-blackholed": [blackholed, good],
        }
        outbound = start_outbound(sidecars, "connect-netns", services, config())
        yield outbound
        # Stopped inside the namespace's lifetime: no connect of it outlives the veth pair.
        outbound.sidecar.stop()


def outbound_for(request: pytest.FixtureRequest, service: str) -> Outbound:
    name = "loopback" if service.endswith("refused") else "namespaced"
    outbound: Outbound = request.getfixturevalue(name)
    return outbound


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("service", ["refused", "rejected"])
def test_refused_endpoint_alone_fails_fast(
    request: pytest.FixtureRequest, service: str, method: str
) -> None:
    outbound = outbound_for(request, service)
    before = outbound.resilience(service)["retry"]["retries_total"]
    body = b"order=1" if method == "POST" else None
    answer = call(outbound.ports[service], f"/{service}", method, body)
    log.info("%s %s alone: %.3fs", service, method, answer.elapsed)
    assert_refusal(answer, 503, "upstream-connect-failed")
    assert answer.elapsed < 0.3, answer.elapsed
    # Refused connects are retried for any method (they never reached the app).
    assert outbound.resilience(service)["retry"]["retries_total"] == before + MAX_RETRIES


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_blackholed_endpoint_alone_fails_at_the_connect_timeout(
    request: pytest.FixtureRequest, method: str
) -> None:
    outbound = outbound_for(request, "blackholed")
    body = b"order=1" if method == "POST" else None
    answer = call(outbound.ports["blackholed"], "/blackholed", method, body)
    log.info("blackholed %s alone: %.3fs", method, answer.elapsed)
    assert_refusal(answer, 503, "upstream-connect-failed")
    assert b"timed out" in answer.body
    expected = CONNECT_TIMEOUT * ATTEMPTS
    assert expected * 0.95 <= answer.elapsed <= expected + 0.3, answer.elapsed


@pytest.mark.parametrize("service", ["mixed-refused", "mixed-rejected", "mixed-blackholed"])
def test_unreachable_endpoint_beside_a_healthy_one_loses_no_request(
    request: pytest.FixtureRequest, healthy: RecordingUpstream, service: str
) -> None:
    outbound = outbound_for(request, service)
    healthy.reset()
    answers = []
    for i in range(10):
        answers.append(call(outbound.ports[service], f"/get/{i}"))
        answers.append(call(outbound.ports[service], f"/post/{i}", "POST", f"id={i}".encode()))
    log.info("%s: slowest of 20 %.3fs", service, max(a.elapsed for a in answers))
    assert [a.status for a in answers] == [200] * 20, [a.body for a in answers if a.status != 200]
    # A request never waits more than one connect timeout for the unreachable endpoint.
    assert max(a.elapsed for a in answers) < CONNECT_TIMEOUT + 0.2
    posts = [r.body for r in healthy.requests if r.method == "POST"]
    assert sorted(posts) == sorted(f"id={i}".encode() for i in range(10)), posts
    stats = outbound.resilience(service)
    assert stats["retry"]["retries_total"] > 0
    outbound.alive()
