"""Authentication per route: JWT (RS256, ES256, HS256 from a JWKS served over HTTP) and
API keys. Every refusal is `401 unauthenticated` with a `WWW-Authenticate` challenge, and
the upstream sees nothing; a success forwards the chosen claims (client copies removed)
and never the credential itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.gateway.conftest import (
    AUDIENCE,
    ISSUER,
    Gateway,
    JwksServer,
    Keys,
    b64url,
    catalog_for,
    claims,
    handmade_token,
    nothing_reached,
    start_gateway,
    stop,
    token,
)
from tests.support.processes import wait_until
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.timeout(60)

PARTNER_KEY = "pk_live_0123456789abcdef"
OTHER_KEY = "pk_live_fedcba9876543210"


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    upstreams: dict[str, RecordingUpstream],
    jwks_server: JwksServer,
    keys: Keys,
) -> Iterator[Gateway]:
    log_dir = tmp_path_factory.mktemp("auth")
    jwks_file = log_dir / "jwks.json"
    jwks_file.write_text(json.dumps(keys.jwks()))
    config = {
        "catalog": str(catalog_for(log_dir, upstreams)),
        "jwt_providers": {
            "shop": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": ["RS256", "ES256", "HS256"],
                "jwks_url": jwks_server.url,
                "clock_skew": 5,
                "min_refresh_interval": 30,
                "claims_to_headers": {"sub": "x-user-id", "email": "x-user-email"},
            },
            "from-file": {"jwks_file": str(jwks_file), "algorithms": ["ES256"]},
            "rsa-only": {"issuer": ISSUER, "jwks_url": jwks_server.url, "algorithms": ["RS256"]},
        },
        "api_keys": {
            "partners": {"keys": {"acme": PARTNER_KEY, "globex": OTHER_KEY}},
        },
        "routes": [
            {"name": "orders", "prefix": "/orders", "service": "orders", "auth": {"jwt": "shop"}},
            {"name": "admin", "prefix": "/admin", "service": "admin",
             "auth": {"jwt": "rsa-only"}},
            {"name": "files", "prefix": "/files", "service": "users",
             "auth": {"jwt": "from-file"}},
            {"name": "reports", "prefix": "/reports", "service": "reports",
             "auth": {"api_key": "partners"}},
            {"prefix": "/", "service": "public"},
        ],
    }  # fmt: skip
    gateway = start_gateway(log_dir, config)
    yield gateway
    stop(gateway.proc)


@pytest.fixture(autouse=True)
def fresh(upstreams: dict[str, RecordingUpstream]) -> None:
    for upstream in upstreams.values():
        upstream.reset()


def bearer(value: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {value}")]


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS256"])
def test_a_valid_token_forwards_its_claims_and_not_itself(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream], keys: Keys, alg: str
) -> None:
    forged_headers = [("X-User-Id", "mallory"), ("x-user-email", "root@shop.test")]
    response = gateway.get("/orders/9", bearer(token(keys, alg)) + forged_headers)
    assert response.status == 200
    (request,) = upstreams["orders"].requests
    assert request.header_all("x-user-id") == ["alice"]
    assert request.header_all("x-user-email") == ["alice@shop.test"]
    assert request.header("authorization") is None


def test_client_copies_of_claim_headers_never_reach_any_route(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    assert gateway.get("/anything", [("X-User-Id", "root")]).status == 200
    (request,) = upstreams["public"].requests
    assert request.header("x-user-id") is None


def _expired(keys: Keys) -> str:
    now = int(time.time())
    return token(keys, iat=now - 600, exp=now - 60)


def _rs_public_as_hmac_secret(keys: Keys) -> str:
    # The classic confusion: HS256 with the issuer's RSA public key as the shared secret.
    return handmade_token({"alg": "HS256", "kid": "rs1", "typ": "JWT"}, claims(),
                          keys.rsa_public_pem())  # fmt: skip


CASES = {
    "expired": _expired,
    "wrong audience": lambda keys: token(keys, aud="another-api"),
    "wrong issuer": lambda keys: token(keys, iss="https://evil.test"),
    "not yet valid": lambda keys: token(keys, nbf=int(time.time()) + 600),
    "no exp": lambda keys: token(keys, exp=None),
    "forged with another key": lambda keys: __import__("jwt").encode(
        claims(), keys.stranger, algorithm="RS256", headers={"kid": "rs1"}
    ),
    "alg none": lambda keys: handmade_token({"alg": "none", "kid": "rs1"}, claims(), None),
    "alg none without kid": lambda keys: handmade_token({"alg": "none"}, claims(), None),
    "HS256 signed with the RSA public key": _rs_public_as_hmac_secret,
    "HS256 under an RSA kid": lambda keys: token(keys, "HS256", kid="rs1"),
    "tampered payload": lambda keys: (
        lambda t: t.split(".")[0] + "." + b64url(b'{"sub":"root"}') + "." + t.split(".")[2]
    )(token(keys)),
    "garbage": lambda keys: "not.a.token",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_tokens_get_401_and_the_upstream_sees_nothing(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream], keys: Keys, case: str
) -> None:
    response = gateway.get("/orders/1", bearer(CASES[case](keys)))
    assert response.status == 401, case
    assert response.get("x-mesh-error") == "unauthenticated"
    challenge = response.get("www-authenticate") or ""
    assert challenge.startswith('Bearer realm="orders", error="invalid_token"'), challenge
    assert nothing_reached(upstreams["orders"])


def test_a_provider_limited_to_rs256_refuses_es256(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream], keys: Keys
) -> None:
    assert gateway.get("/admin/x", bearer(token(keys, "RS256", aud=None))).status == 200
    assert gateway.get("/admin/x", bearer(token(keys, "ES256"))).status == 401
    assert len(upstreams["admin"].requests) == 1


def test_missing_or_other_scheme_credentials_get_a_bare_challenge(gateway: Gateway) -> None:
    for headers in ([], [("Authorization", "Basic YWxpY2U6c2VjcmV0")]):
        response = gateway.get("/orders/1", headers)
        assert response.status == 401
        assert response.get("www-authenticate") == 'Bearer realm="orders"'


def test_an_unknown_kid_refreshes_the_key_set_once(
    gateway: Gateway,
    upstreams: dict[str, RecordingUpstream],
    keys: Keys,
    jwks_server: JwksServer,
) -> None:
    """The issuer rotates in a new key: the first token naming it makes the gateway fetch
    the set again; a kid still unknown after that does not cause another fetch."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = RSAAlgorithm.to_jwk(rotated.public_key(), as_dict=True)
    jwks_server.document = keys.jwks([{**public, "kid": "rs2", "alg": "RS256"}])
    before = jwks_server.fetches
    fresh_token = __import__("jwt").encode(
        claims(sub="bob"), rotated, algorithm="RS256", headers={"kid": "rs2"}
    )
    response = gateway.get("/orders/2", bearer(fresh_token))
    assert response.status == 200
    assert jwks_server.fetches == before + 1
    assert upstreams["orders"].requests[0].header("x-user-id") == "bob"
    # Within min_refresh_interval, an invented kid is refused without another fetch.
    invented = __import__("jwt").encode(
        claims(), rotated, algorithm="RS256", headers={"kid": "rs-invented"}
    )
    assert gateway.get("/orders/3", bearer(invented)).status == 401
    assert jwks_server.fetches == before + 1
    assert len(upstreams["orders"].requests) == 1


def test_api_keys_name_the_consumer_and_stay_at_the_gateway(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    ok = gateway.get("/reports/q1", [("X-Api-Key", PARTNER_KEY), ("X-Api-Consumer", "root")])
    assert ok.status == 200
    (request,) = upstreams["reports"].requests
    assert request.header_all("x-api-consumer") == ["acme"]
    assert request.header("x-api-key") is None


@pytest.mark.parametrize("headers", [[], [("X-Api-Key", "pk_live_not_a_real_key_000")]])
def test_missing_or_unknown_api_keys_get_401(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream], headers: list[tuple[str, str]]
) -> None:
    response = gateway.get("/reports/q1", headers)
    assert response.status == 401
    assert response.get("www-authenticate") == 'ApiKey realm="reports", header="x-api-key"'
    assert nothing_reached(upstreams["reports"])


def test_the_admin_api_shows_key_sets_and_hides_api_keys(gateway: Gateway) -> None:
    state = gateway.proc.admin("/gateway")
    assert state["jwks"]["shop"]["loaded"] is True
    assert "rs1" in state["jwks"]["shop"]["keys"]
    config = gateway.proc.admin("/config")
    assert PARTNER_KEY not in str(config)
    wait_until(lambda: gateway.proc.admin("/ready")["ready"], 5, "ready")


def test_keys_from_a_jwks_file(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream], keys: Keys
) -> None:
    assert gateway.get("/files/a", bearer(token(keys, "ES256", aud=None))).status == 200
    assert gateway.get("/files/a", bearer(token(keys, "RS256", aud=None))).status == 401
    assert len(upstreams["users"].requests) == 1
