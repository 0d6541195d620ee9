"""The response cache: a cacheable answer is served from the gateway (the upstream sees one
request), and `no-store`, `private`, `Vary`, authenticated requests and request directives
are honoured. Every answer of a caching route says `x-cache: hit` or `miss`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.gateway.conftest import Gateway, catalog_for, start_gateway, stop
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply

pytestmark = pytest.mark.timeout(60)

API_KEY = "pk_cache_0123456789abcdef"
_paths = itertools.count()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstreams: dict[str, RecordingUpstream]
) -> Iterator[Gateway]:
    log_dir = tmp_path_factory.mktemp("cache")
    config = {
        "catalog": str(catalog_for(log_dir, upstreams)),
        "api_keys": {"partners": {"keys": {"acme": API_KEY}}},
        "cache": {"max_bytes": 200_000, "max_entry_bytes": 50_000},
        "routes": [
            {"name": "catalog", "prefix": "/catalog", "service": "products", "cache": True},
            {"name": "partner", "prefix": "/partner", "service": "reports", "cache": True,
             "auth": {"api_key": "partners"}},
            {"name": "nocache", "prefix": "/", "service": "public"},
        ],
    }  # fmt: skip
    gateway = start_gateway(log_dir, config)
    yield gateway
    stop(gateway.proc)


def replying(cache_control: str | None, extra: list[tuple[str, str]] | None = None):  # type: ignore[no-untyped-def]
    """An upstream handler: a body naming the request number and the request's language."""
    counter = itertools.count(1)

    def handler(request: RecordedRequest) -> Reply:
        headers = [("Content-Type", "text/plain"), *(extra or [])]
        if cache_control is not None:
            headers.append(("Cache-Control", cache_control))
        lang = request.header("accept-language") or "-"
        return Reply(headers=headers, body=f"answer {next(counter)} {lang}\n".encode())

    return handler


def fresh_path(prefix: str) -> str:
    return f"{prefix}/item-{next(_paths)}"


def test_a_cacheable_answer_is_served_from_the_cache(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    products = upstreams["products"]
    products.reset(replying("max-age=60"))
    path = fresh_path("/catalog")
    first, second = gateway.get(path), gateway.get(path)
    assert (first.status, first.get("x-cache")) == (200, "miss")
    assert (second.status, second.get("x-cache")) == (200, "hit")
    assert second.body == first.body == b"answer 1 -\n"
    assert second.get("age") is not None
    head = gateway.get(path, method="HEAD")
    assert (head.status, head.get("x-cache"), head.body) == (200, "hit", b"")
    assert len(products.requests) == 1
    # Another query string is another resource.
    assert gateway.get(path + "?page=2").get("x-cache") == "miss"
    assert len(products.requests) == 2


@pytest.mark.parametrize(
    "cache_control", [None, "no-store", "private, max-age=60", "no-cache, max-age=60", "max-age=0"]
)
def test_answers_that_must_not_be_shared_are_not_cached(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream], cache_control: str | None
) -> None:
    products = upstreams["products"]
    products.reset(replying(cache_control))
    path = fresh_path("/catalog")
    answers = [gateway.get(path) for _ in range(2)]
    assert [a.get("x-cache") for a in answers] == ["miss", "miss"]
    assert [a.body for a in answers] == [b"answer 1 -\n", b"answer 2 -\n"]
    assert len(products.requests) == 2


def test_set_cookie_answers_are_not_cached(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    upstreams["products"].reset(replying("max-age=60", [("Set-Cookie", "session=abc")]))
    path = fresh_path("/catalog")
    assert [gateway.get(path).get("x-cache") for _ in range(2)] == ["miss", "miss"]


def test_vary_keeps_one_answer_per_header_value(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    products = upstreams["products"]
    products.reset(replying("max-age=60", [("Vary", "Accept-Language")]))
    path = fresh_path("/catalog")
    fr = [("Accept-Language", "fr")]
    de = [("Accept-Language", "de")]
    assert gateway.get(path, fr).body == b"answer 1 fr\n"
    assert gateway.get(path, de).body == b"answer 2 de\n"
    hit_fr, hit_de = gateway.get(path, fr), gateway.get(path, de)
    assert (hit_fr.get("x-cache"), hit_fr.body) == ("hit", b"answer 1 fr\n")
    assert (hit_de.get("x-cache"), hit_de.body) == ("hit", b"answer 2 de\n")
    assert len(products.requests) == 2


def test_request_directives_go_upstream(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    products = upstreams["products"]
    products.reset(replying("max-age=60"))
    path = fresh_path("/catalog")
    gateway.get(path)
    assert gateway.get(path, [("Cache-Control", "no-cache")]).get("x-cache") == "miss"
    assert gateway.get(path, [("If-None-Match", '"x"')]).get("x-cache") == "miss"
    assert gateway.get(path).get("x-cache") == "hit"
    assert len(products.requests) == 3


@pytest.mark.parametrize(
    ("cache_control", "cached"), [("max-age=60", False), ("public, max-age=60", True)]
)
def test_authenticated_answers_are_cached_only_when_public(
    gateway: Gateway,
    upstreams: dict[str, RecordingUpstream],
    cache_control: str,
    cached: bool,
) -> None:
    reports = upstreams["reports"]
    reports.reset(replying(cache_control))
    path = fresh_path("/partner")
    key = [("X-Api-Key", API_KEY)]
    assert gateway.get(path, key).get("x-cache") == "miss"
    assert gateway.get(path, key).get("x-cache") == ("hit" if cached else "miss")
    # A cached answer still needs the credential.
    assert gateway.get(path).status == 401
    assert len(reports.requests) == (1 if cached else 2)


def test_a_request_with_authorization_is_not_shared_on_a_public_route(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    upstreams["products"].reset(replying("max-age=60"))
    path = fresh_path("/catalog")
    auth = [("Authorization", "Basic YWxpY2U6c2VjcmV0")]
    assert gateway.get(path, auth).get("x-cache") == "miss"
    assert gateway.get(path).get("x-cache") == "miss"


def test_the_cache_stays_within_its_byte_budget(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    big = b"x" * 40_000

    def handler(request: RecordedRequest) -> Reply:
        return Reply(headers=[("Cache-Control", "max-age=60")], body=big)

    upstreams["products"].reset(handler)
    paths = [fresh_path("/catalog") for _ in range(8)]
    for path in paths:
        assert gateway.get(path).body == big
    stats = gateway.proc.admin("/gateway")["cache"]
    assert stats["bytes"] <= 200_000
    assert stats["evictions"] >= 3
    # The most recent ones are still there; the oldest went first.
    assert gateway.get(paths[-1]).get("x-cache") == "hit"
    assert gateway.get(paths[0]).get("x-cache") == "miss"


def test_routes_without_caching_never_say_hit(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    upstreams["public"].reset(replying("max-age=60"))
    answers = [gateway.get("/plain") for _ in range(2)]
    assert [a.get("x-cache") for a in answers] == [None, None]
