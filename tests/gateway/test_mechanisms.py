"""The gateway's pure pieces without a network: path normalisation, token buckets, the
response store's byte budget, Accept-Encoding, and config errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.errors import BadRequest
from mesh.gateway.cache import Entry, ResponseStore
from mesh.gateway.compress import choose_encoding
from mesh.gateway.paths import normalise_path
from mesh.gateway.ratelimit import TokenBuckets
from sidecar.config import ConfigError, build
from sidecar.gateway_config import GatewayConfig
from tests.support.processes import write_yaml

SEGMENT = st.sampled_from(
    ["a", "admin", ".", "..", "", "%2e", "%2E%2e", "%41", "b;x=1", "%7e", "%20", "%2F", "%00"]
)


@given(st.lists(SEGMENT, max_size=8))
def test_normal_form_is_stable_and_has_no_dot_segments(segments: list[str]) -> None:
    raw = ("/" + "/".join(segments)).encode()
    try:
        once = normalise_path(raw)
    except BadRequest:
        return
    assert normalise_path(once) == once
    parts = once.split(b"/")
    assert b".." not in parts and b"." not in parts
    assert b"//" not in once
    assert b"%2E" not in once.upper()


def test_token_buckets_refill_and_stay_bounded() -> None:
    buckets = TokenBuckets(rate=2.0, burst=2, max_keys=100)
    assert [buckets.take("a", 0.0).allowed for _ in range(3)] == [True, True, False]
    refused = buckets.take("a", 0.0)
    assert refused.retry_after == pytest.approx(0.5)
    assert buckets.take("a", 0.5).allowed
    for i in range(10_000):
        buckets.take(f"flood-{i}", 1.0)
    assert len(buckets) == 100


def test_the_store_evicts_the_least_recently_used_within_its_budget() -> None:
    store = ResponseStore(max_bytes=3000, max_entry_bytes=1500)

    def entry(size: int) -> Entry:
        return Entry(200, [], b"x" * size, 0.0, 100.0, 0.0, size)

    for name in (b"/a", b"/b", b"/c"):
        store.store(b"h", name, (), [], entry(900))
    assert store.lookup(b"h", b"/a", [], 1.0) is not None  # /a is now the most recent
    store.store(b"h", b"/d", (), [], entry(900))
    assert store.size <= 3000
    assert store.lookup(b"h", b"/b", [], 1.0) is None
    assert store.lookup(b"h", b"/a", [], 1.0) is not None
    store.store(b"h", b"/big", (), [], entry(2000))  # over max_entry_bytes: not kept
    assert store.lookup(b"h", b"/big", [], 1.0) is None
    assert store.lookup(b"h", b"/a", [], 200.0) is None  # expired


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, None),
        (b"gzip", b"gzip"),
        (b"br, gzip", b"br"),
        (b"br;q=0, gzip;q=0.5", b"gzip"),
        (b"*", b"br"),
        (b"*;q=0, identity", None),
        (b"deflate", None),
    ],
)
def test_accept_encoding(accept: bytes | None, expected: bytes | None) -> None:
    assert choose_encoding(accept, brotli_available=True) == expected


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"routes": [{"prefix": "/x", "service": "s", "auth": {"jwt": "nope"}}]},
         "routes.0.auth: unknown JWT provider 'nope'"),
        ({"routes": [{"prefix": "/x/../y", "service": "s"}]},
         "routes.0.prefix"),
        ({"routes": [{"prefix": "/x", "service": "s", "rate_limit": {"requests": 0}}]},
         "routes.0.rate_limit.requests"),
        ({"routes": [{"prefix": "/x", "service": "s",
                      "rate_limit": {"requests": 5, "key": "sub"}}]},
         "routes.0.rate_limit.key: sub needs JWT auth"),
        ({"routes": [{"prefix": "/x", "service": "s", "auth": "magic"}]},
         "routes.0.auth"),
        ({"routes": [{"prefix": "/x", "service": "s"}], "listen": "127.0.0.1:1", "app_port": 2},
         "a gateway has no local app"),
        ({"routes": [{"prefix": "/x", "service": "s"}], "rootes": []}, "rootes: unknown key"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(
    tmp_path: Path, config: dict[str, object], message: str
) -> None:
    path = write_yaml(tmp_path / "gateway.yaml", {"ingress": {"listen": "127.0.0.1:0"}, **config})
    with pytest.raises(ConfigError) as error:
        build(path, {}, model=GatewayConfig)
    assert message in str(error.value)


def test_verified_tokens_are_remembered_until_the_key_set_changes(tmp_path: Path) -> None:
    import json as _json

    import jwt

    from mesh.errors import Unauthenticated
    from mesh.gateway.config import JwtProviderConfig
    from mesh.gateway.jwks import KeySet, parse_jwks
    from mesh.gateway.jwt_auth import JwtAuthenticate
    from tests.gateway.conftest import HS_SECRET, b64url
    from tests.support.fakes import make_request, run

    def document(secret: bytes) -> bytes:
        key = {"kty": "oct", "k": b64url(secret), "kid": "hs1", "alg": "HS256"}
        return _json.dumps({"keys": [key]}).encode()

    keys = KeySet("p", JwtProviderConfig(jwks_file=tmp_path / "unused", algorithms=("HS256",)))
    keys.by_id, keys.unnamed = parse_jwks(document(HS_SECRET))
    seen: list[str] = []

    class Inner:
        async def handle(self, request: object) -> object:
            seen.append(getattr(request, "peer_identity", ""))
            return object()

    auth = JwtAuthenticate(Inner(), keys, "r")  # type: ignore[arg-type]
    token = jwt.encode({"sub": "ann", "exp": 4_000_000_000}, HS_SECRET, "HS256", {"kid": "hs1"})

    def call() -> None:
        run(auth.handle(make_request(headers=[(b"authorization", b"Bearer " + token.encode())])))

    call()
    # The issuer replaced the key; until the set is reloaded, the token is remembered.
    keys.by_id, keys.unnamed = parse_jwks(document(b"another-secret-of-thirty-two-byt"))
    call()
    assert seen == ["ann", "ann"]
    keys.generation += 1  # what a reload that changed the set does
    with pytest.raises(Unauthenticated):
        call()


def test_the_command_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    import subprocess

    from tests.support.processes import MESH

    path = write_yaml(
        tmp_path / "gateway.yaml",
        {"ingress": {"listen": "127.0.0.1:0"}, "routes": [{"prefix": "/x", "service": ""}]},
    )
    done = subprocess.run(
        [MESH, "gateway", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert "config error: routes.0.service" in done.stderr


def test_not_ready_until_the_key_set_has_loaded(tmp_path: Path) -> None:
    from tests.gateway.conftest import start_gateway, stop
    from tests.support.processes import free_port, wait_until

    closed = free_port()  # nothing listens here: the key set cannot load
    gateway = start_gateway(
        tmp_path,
        {
            "catalog": str(write_yaml(tmp_path / "catalog.yaml", {"services": {}})),
            "jwt_providers": {"p": {"jwks_url": f"http://127.0.0.1:{closed}/jwks"}},
            "routes": [{"prefix": "/", "service": "s", "auth": {"jwt": "p"}}],
        },
        wait_ready=False,
    )
    try:

        def reason() -> str:
            try:
                return str(gateway.proc.admin("/ready")["reason"])
            except OSError:
                return ""

        wait_until(lambda: "waiting for JWT keys: p" in reason(), 10, "the not-ready reason")
        state = gateway.proc.admin("/gateway")["jwks"]["p"]
        assert state["loaded"] is False
        wait_until(
            lambda: bool(gateway.proc.admin("/gateway")["jwks"]["p"]["last_error"]),
            5,
            "the fetch error to show",
        )
    finally:
        stop(gateway.proc)
