"""Routes by host and longest prefix on the normalised path (RELIABILITY.md row 26).

One gateway, the shop's routes: `/users` and `/products` public (products rewritten to
`/`), `/orders` and `/admin` behind a JWT, everything else to `public`, and the host
`reports.shop.test` to its own service. Path tricks that would reach `/admin` through the
public catch-all either land on the `/admin` route (and meet its 401) or are refused with
400; the catch-all upstream never sees a request for /admin.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.gateway.conftest import (
    Gateway,
    JwksServer,
    Keys,
    catalog_for,
    nothing_reached,
    start_gateway,
    stop,
    token,
)
from tests.support.processes import free_port, wait_until, write_yaml
from tests.support.rawclient import send_raw
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.timeout(60)


def catalog_with_a_dead_twin(log_dir: Path, upstreams: dict[str, RecordingUpstream]) -> Path:
    """The shop's services, and `twin`: one endpoint that refuses connections, one alive."""
    catalog = catalog_for(log_dir, upstreams)
    data = yaml.safe_load(catalog.read_text())
    data["services"]["twin"] = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{upstreams['users'].port}"]
    return write_yaml(catalog, data)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    upstreams: dict[str, RecordingUpstream],
    jwks_server: JwksServer,
) -> Iterator[Gateway]:
    log_dir = tmp_path_factory.mktemp("routing")
    config = {
        "catalog": str(catalog_with_a_dead_twin(log_dir, upstreams)),
        "access_log": True,
        "jwt_providers": {
            "shop": {"issuer": "https://auth.shop.test", "audiences": ["shop-api"],
                     "jwks_url": jwks_server.url},
        },
        "routes": [
            {"name": "users", "prefix": "/users", "service": "users"},
            {"name": "products", "prefix": "/products", "service": "products", "rewrite": "/"},
            {"name": "orders", "prefix": "/orders", "service": "orders", "auth": {"jwt": "shop"}},
            {"name": "admin", "prefix": "/admin", "service": "admin", "auth": {"jwt": "shop"}},
            {"name": "public", "prefix": "/", "service": "public"},
            {"name": "twin", "prefix": "/twin", "service": "twin"},
            {"name": "reports", "hosts": ["reports.shop.test"], "prefix": "/",
             "service": "reports"},
            {"name": "wild", "hosts": ["*.internal.test"], "prefix": "/api/",
             "service": "reports", "rewrite": "/internal/"},
        ],
    }  # fmt: skip
    gateway = start_gateway(log_dir, config)
    yield gateway
    stop(gateway.proc)


@pytest.fixture(autouse=True)
def fresh(upstreams: dict[str, RecordingUpstream]) -> None:
    for upstream in upstreams.values():
        upstream.reset()


def seen(upstream: RecordingUpstream) -> list[str]:
    return [r.target for r in upstream.requests]


def test_each_prefix_reaches_its_service(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    assert gateway.get("/users/42?full=1").status == 200
    assert gateway.get("/products/7").status == 200
    assert gateway.get("/products").status == 200
    assert gateway.get("/usersettings").status == 200  # not /users: whole segments only
    assert seen(upstreams["users"]) == ["/users/42?full=1"]
    assert seen(upstreams["products"]) == ["/7", "/"]
    assert seen(upstreams["public"]) == ["/usersettings"]


def test_the_host_picks_the_virtual_host(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    assert gateway.get("/users/1", host="reports.shop.test").status == 200
    assert gateway.get("/api/x", host="eu.internal.test:8080").status == 200
    miss = gateway.get("/other", host="eu.internal.test")
    assert miss.status == 404
    assert miss.get("x-mesh-error") == "route-not-found"
    assert seen(upstreams["reports"]) == ["/users/1", "/internal/x"]
    assert nothing_reached(upstreams["users"])


def test_a_jwt_route_without_a_token_is_refused_before_the_upstream(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    response = gateway.get("/orders/1?secret=1")
    assert response.status == 401
    assert response.get("x-mesh-error") == "unauthenticated"
    assert response.get("www-authenticate") == 'Bearer realm="orders"'
    assert nothing_reached(upstreams["orders"])
    wait_until(
        lambda: any(r["path"] == "/orders/1" for r in gateway.proc.access_log()),
        5,
        "the access log line",
    )
    (line,) = [r for r in gateway.proc.access_log() if r["path"] == "/orders/1"]
    assert (line["status"], line["mesh_error"]) == (401, "unauthenticated")


@pytest.mark.parametrize(
    "target",
    [
        "/public/../admin",
        "/public/../admin/users",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/x/./../admin",
        "//admin",
        "///admin/",
        "/ADMIN",
        "/Admin/x",
        "/admin;x=y",
        "/%61dmin",
        "/public/%C3%A9/../../admin",
        "/public/..%2F..%2Fadmin".replace("..%2F..%2F", "../../"),
    ],
)
def test_path_tricks_meet_the_admin_rule(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream], target: str
) -> None:
    response = gateway.get(target)
    assert response.status == 401, target
    assert nothing_reached(upstreams["admin"], upstreams["public"])


@pytest.mark.parametrize(
    "target",
    [
        "/public%2F..%2Fadmin",
        "/public/..%2fadmin",
        "/public/..%5Cadmin",
        "/public/%252e%252e/admin",
        "/public/..;/admin",
        "/admin%00",
        "/public/%zz",
        "/admin#f",
    ],
)
def test_paths_that_cannot_be_normalised_safely_get_400(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream], target: str
) -> None:
    response = gateway.get(target)
    assert response.status == 400, target
    assert response.get("x-mesh-error") == "bad-request"
    assert nothing_reached(*upstreams.values())


def test_a_backslash_is_refused(gateway: Gateway, upstreams: dict[str, RecordingUpstream]) -> None:
    result = send_raw(gateway.port, b"GET /public\\..\\admin HTTP/1.1\r\nHost: shop.test\r\n\r\n")
    assert result.data.startswith(b"HTTP/1.1 400"), result.data[:80]
    assert nothing_reached(*upstreams.values())


def test_an_absolute_form_target_is_normalised_too(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    result = send_raw(
        gateway.port,
        b"GET http://shop.test/public/%2e%2e/admin HTTP/1.1\r\nHost: shop.test\r\n\r\n",
        timeout=2,
    )
    assert result.data.startswith(b"HTTP/1.1 401"), result.data[:80]
    assert nothing_reached(upstreams["admin"], upstreams["public"])


def test_the_forwarded_path_is_the_checked_one(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    assert gateway.get("/users/./a//b/../c/?q=%2e%2e/x").status == 200
    assert gateway.get("/%75sers/%7Ebob%20x").status == 200
    assert seen(upstreams["users"]) == ["/users/a/c/?q=%2e%2e/x", "/users/~bob%20x"]


def test_a_valid_token_passes_a_normalised_admin_path(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream], keys: Keys
) -> None:
    bearer = [("Authorization", f"Bearer {token(keys)}")]
    assert gateway.get("/public/../admin/stats", bearer).status == 200
    assert seen(upstreams["admin"]) == ["/admin/stats"]


def test_outside_trace_context_does_not_reach_the_mesh(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    client_parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = [("traceparent", client_parent), ("X-B3-TraceId", "463ac35c9f6413ad")]
    assert gateway.get("/users/1", headers).status == 200
    (request,) = upstreams["users"].requests
    assert request.header("traceparent") != client_parent
    assert request.header("x-b3-traceid") is None


def test_the_services_upstream_stack_retries_elsewhere(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    """Routes end in the same per-service stack a sidecar uses: a refused connection is
    retried on the other endpoint (and the breaker soon takes the dead one out)."""
    statuses = [gateway.get(f"/twin/{i}").status for i in range(10)]
    assert statuses == [200] * 10
    assert seen(upstreams["users"]) == [f"/twin/{i}" for i in range(10)]
