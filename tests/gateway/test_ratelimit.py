"""Rate limits per route: the N+1th request in the window gets `429 rate-limited` with
`Retry-After` and `RateLimit` headers, other keys (another client address, another API key)
are unaffected, and the route recovers once tokens are back."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.gateway.conftest import Gateway, catalog_for, start_gateway, stop
from tests.support.processes import wait_until
from tests.support.rawclient import Response
from tests.support.tlsclient import SourcedHttpConnection
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.timeout(60)

KEY_A = "pk_test_aaaaaaaaaaaaaaaa"
KEY_B = "pk_test_bbbbbbbbbbbbbbbb"


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstreams: dict[str, RecordingUpstream]
) -> Iterator[Gateway]:
    log_dir = tmp_path_factory.mktemp("ratelimit")
    config = {
        "catalog": str(catalog_for(log_dir, upstreams)),
        "api_keys": {"partners": {"keys": {"a": KEY_A, "b": KEY_B}}},
        "routes": [
            # 3 per 2 s: refills a token every 0.67 s, so recovery is quick to see.
            {"name": "search", "prefix": "/search", "service": "products",
             "rate_limit": {"requests": 3, "per": 2}},
            {"name": "partner", "prefix": "/partner", "service": "reports",
             "auth": {"api_key": "partners"},
             "rate_limit": {"requests": 2, "per": 60, "key": "api_key"}},
            {"prefix": "/", "service": "public"},
        ],
    }  # fmt: skip
    gateway = start_gateway(log_dir, config)
    yield gateway
    stop(gateway.proc)


def get_from(
    gateway: Gateway, source: str, target: str, headers: list[tuple[str, str]]
) -> Response:
    with SourcedHttpConnection(gateway.port, source) as conn:
        conn.request("GET", target, headers, host="shop.test")
        return conn.read_response()


def test_the_n_plus_first_request_gets_429_and_other_clients_are_unaffected(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    products = upstreams["products"]
    products.reset()
    answers = [get_from(gateway, "127.0.0.1", "/search?q=x", []) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 429]
    assert answers[0].get("ratelimit-policy") == '"search";q=3;w=2'
    assert re.fullmatch(r'"search";r=2;t=\d+', answers[0].get("ratelimit") or "")
    refused = answers[3]
    assert refused.get("x-mesh-error") == "rate-limited"
    assert int(refused.get("retry-after") or 0) >= 1
    assert re.fullmatch(r'"search";r=0;t=\d+', refused.get("ratelimit") or "")
    assert len(products.requests) == 3
    # Another client address has its own bucket.
    assert get_from(gateway, "127.0.0.2", "/search?q=x", []).status == 200
    # Other routes have no limit.
    assert get_from(gateway, "127.0.0.1", "/elsewhere", []).status == 200
    # Tokens come back at 1.5/s: the first client recovers.
    wait_until(
        lambda: get_from(gateway, "127.0.0.1", "/search?q=y", []).status == 200,
        5,
        "the limited client to be served again",
        step=0.2,
    )


def test_limits_keyed_by_api_key_follow_the_consumer_not_the_address(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    reports = upstreams["reports"]
    reports.reset()
    a = [("X-Api-Key", KEY_A)]
    statuses = [
        get_from(gateway, src, "/partner/r", a).status
        for src in ("127.0.0.3", "127.0.0.4", "127.0.0.5")
    ]
    assert statuses == [200, 200, 429]
    assert get_from(gateway, "127.0.0.3", "/partner/r", [("X-Api-Key", KEY_B)]).status == 200
    assert [r.header("x-api-consumer") for r in reports.requests] == ["a", "a", "b"]


def test_the_admin_api_counts_refusals_per_route(gateway: Gateway) -> None:
    routes = {r["name"]: r for r in gateway.proc.admin("/gateway")["routes"]}
    assert routes["search"]["layers"]["RateLimit"]["refused"] >= 1
    assert routes["partner"]["layers"]["ApiKeyAuthenticate"] == {"consumers": 2, "refused": 0}
    assert list(routes["partner"]["layers"]) == ["ApiKeyAuthenticate", "RateLimit", "Compress"]
