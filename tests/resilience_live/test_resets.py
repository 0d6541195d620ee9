"""RELIABILITY rows 31 and 32: upstreams that die before or during their answer.

Row 31: an endpoint that takes the request and resets the connection before any response
byte. A GET is retried on the healthy endpoint and succeeds; a POST is not retried (the app
may have acted on it) and gets `502 upstream-reset`; no POST reaches the apps twice.

Row 32: once a response head has gone to the client nothing is retried, and a body that
breaks off (reset, or fewer bytes than its Content-Length before the close) reaches the
client as an aborted response on a dropped connection, never as a complete 200. A response
framed by both Content-Length and Transfer-Encoding is refused before anything is forwarded.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.resilience_live.conftest import Outbound, assert_refusal, call, start_outbound
from tests.support.processes import Sidecars
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply

BACKOFF = {"backoff_base": 0.005, "backoff_max": 0.02}


def reset_before_head(request: RecordedRequest) -> Reply:
    return Reply(raw=b"", reset=True)


@pytest.fixture(scope="module")
def resetter() -> Iterator[RecordingUpstream]:
    with RecordingUpstream(reset_before_head) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def healthy() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def outbound(
    sidecars: Sidecars, resetter: RecordingUpstream, healthy: RecordingUpstream
) -> Outbound:
    services = {
        "resetting": [f"127.0.0.1:{resetter.port}", f"127.0.0.1:{healthy.port}"],
        "cut": [f"127.0.0.1:{healthy.port}"],
    }
    return start_outbound(
        sidecars,
        "resets",
        services,
        {
            "balance": "round_robin",
            "outbound_timeouts": {"connect": 0.5, "request": 5.0},
            "resilience": {
                "retry": {"max_retries": 2, **BACKOFF},
                # Every request meets the resetting endpoint in turn: it is never ejected.
                "outlier": {"enabled": False},
            },
        },
    )


@pytest.fixture(autouse=True)
def fresh(resetter: RecordingUpstream, healthy: RecordingUpstream) -> None:
    resetter.reset(reset_before_head)
    healthy.reset()


def test_get_reset_before_the_head_is_retried_elsewhere(
    outbound: Outbound, resetter: RecordingUpstream, healthy: RecordingUpstream
) -> None:
    before = outbound.resilience("resetting")["retry"]["retries_total"]
    answers = [call(outbound.ports["resetting"], f"/get/{i}") for i in range(10)]
    assert [a.status for a in answers] == [200] * 10, [a.body for a in answers]
    met_reset = {r.target for r in resetter.requests}
    assert met_reset, "round robin sends every other attempt to the resetting endpoint"
    assert sorted(r.target for r in healthy.requests) == [f"/get/{i}" for i in range(10)]
    retries = outbound.resilience("resetting")["retry"]["retries_total"] - before
    assert retries == len(met_reset) > 0


def test_post_reset_before_the_head_is_not_retried(
    outbound: Outbound, resetter: RecordingUpstream, healthy: RecordingUpstream
) -> None:
    before = outbound.resilience("resetting")["retry"]
    ids = [f"id={i}".encode() for i in range(10)]
    answers = [
        call(outbound.ports["resetting"], f"/post/{i}", "POST", body) for i, body in enumerate(ids)
    ]
    failed = {body for body, a in zip(ids, answers, strict=True) if a.status != 200}
    for answer in answers:
        if answer.status != 200:
            assert_refusal(answer, 502, "upstream-reset")
    assert failed, "round robin sends every other POST to the resetting endpoint"
    # Each POST reached an app exactly once: the failed ones the resetter, the rest the
    # healthy one; none was sent on after it may have been processed.
    at_resetter = [r.body for r in resetter.requests]
    at_healthy = [r.body for r in healthy.requests]
    assert sorted(at_resetter) == sorted(failed)
    assert sorted(at_healthy) == sorted(set(ids) - failed)
    after = outbound.resilience("resetting")["retry"]
    assert after["retries_total"] == before["retries_total"]
    not_retried = after["not_retried_total"].get("not-retryable", 0)
    assert not_retried - before["not_retried_total"].get("not-retryable", 0) == len(failed)


LENGTH_AND_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
)


@pytest.fixture(scope="module")
def p2c_outbound(
    sidecars: Sidecars, resetter: RecordingUpstream, healthy: RecordingUpstream
) -> Outbound:
    both = [f"127.0.0.1:{resetter.port}", f"127.0.0.1:{healthy.port}"]
    return start_outbound(
        sidecars,
        "resets-p2c",
        {"breakers": both, "no-breakers": both},
        {
            "balance": "p2c",
            "outbound_timeouts": {"connect": 0.5, "request": 5.0},
            "resilience": {"retry": {"max_retries": 1, **BACKOFF}},
            "services": {
                # Never ejected, so that every request may meet the resetting endpoint.
                "breakers": {"breaker": {"consecutive_failures": 1000}},
                "no-breakers": {"outlier": {"enabled": False}},
            },
        },
    )


@pytest.mark.parametrize(
    "service",
    [
        "breakers",
        pytest.param("no-breakers"),
    ],
)
def test_retry_goes_to_another_endpoint_with_p2c(
    p2c_outbound: Outbound, resetter: RecordingUpstream, healthy: RecordingUpstream, service: str
) -> None:
    port = p2c_outbound.ports[service]
    # 40 GETs: were retries blind, P(all succeed) = 0.75 ** 40, about 1e-5.
    statuses = [call(port, f"/get/{i}").status for i in range(40)]
    assert resetter.requests, "p2c sends some first attempts to the resetting endpoint"
    assert statuses == [200] * 40, statuses
    ids = [f"id={i}".encode() for i in range(20)]
    for i, body in enumerate(ids):
        assert call(port, f"/post/{i}", "POST", body).status in (200, 502)
    posts = [r.body for r in resetter.requests + healthy.requests if r.method == "POST"]
    assert sorted(posts) == sorted(ids), "each POST reached an app exactly once"


CUTS = {
    "reset-mid-body": Reply(body=b"x" * 100, abort_after=50, abort_with="rst"),
    "short-body-then-close": Reply(body=b"x" * 50, content_length=100, close=True),
}


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("cut", sorted(CUTS))
def test_response_cut_after_the_head_is_aborted_not_retried(
    outbound: Outbound, healthy: RecordingUpstream, cut: str, method: str
) -> None:
    healthy.handler = lambda req: CUTS[cut]
    body = b"payload" if method == "POST" else None
    answer = call(outbound.ports["cut"], "/cut", method, body)
    assert answer.cut, f"the client saw a complete {answer.status}"
    assert answer.body_received < 100
    assert answer.closed_by_peer, "the client connection must be dropped"
    assert len(healthy.requests) == 1, "nothing is retried once a head was forwarded"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_response_with_length_and_chunked_framing_is_refused(
    outbound: Outbound, healthy: RecordingUpstream, method: str
) -> None:
    healthy.handler = lambda req: Reply(raw=LENGTH_AND_CHUNKED)
    body = b"payload" if method == "POST" else None
    answer = call(outbound.ports["cut"], "/cl-te", method, body)
    assert_refusal(answer, 502, "upstream-protocol-error")
    assert len(healthy.requests) == 1, "an upstream protocol error is not retried"
