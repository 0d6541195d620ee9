"""Fixtures for the gateway tests: signing keys, a JWKS server, real gateway processes.

test --HTTP--> mesh gateway --HTTP or mTLS--> [sidecar -->] recording upstreams
                    |
                    +--HTTP--> JwksServer (the test's issuer; counts fetches)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support.processes import MeshProcess, free_port, write_yaml
from tests.support.rawclient import HttpConnection, Response
from tests.support.upstream import RecordingUpstream

ISSUER = "https://auth.shop.test"
AUDIENCE = "shop-api"
HS_SECRET = b"a-shared-secret-of-thirty-two-by"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Keys:
    """The issuer's signing keys; `jwks()` is what it publishes."""

    rsa: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    ec: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    #: A key that signs tokens the issuer never published.
    stranger: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    def jwks(self, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        rs = RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True)
        es = ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True)
        oct_key = {"kty": "oct", "k": b64url(HS_SECRET), "kid": "hs1", "alg": "HS256"}
        return {
            "keys": [
                {**rs, "kid": "rs1", "alg": "RS256", "use": "sig"},
                {**es, "kid": "es1", "alg": "ES256"},
                oct_key,
                *(extra or []),
            ]
        }

    def rsa_public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "email": "alice@shop.test",
        "iat": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(keys: Keys, alg: str = "RS256", kid: str | None = None, **overrides: Any) -> str:
    key: Any = {"RS256": keys.rsa, "ES256": keys.ec, "HS256": HS_SECRET}[alg]
    kid = kid or {"RS256": "rs1", "ES256": "es1", "HS256": "hs1"}[alg]
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers={"kid": kid})


def handmade_token(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token PyJWT would refuse to make: `alg: none`, or HMAC with any byte string as key."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    signature = b""
    if secret is not None:
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


class JwksServer:
    """The issuer's key endpoint over real HTTP; `document` can change, fetches are counted."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                body = json.dumps(server.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Gateway:
    """A `mesh gateway` process and how to talk to it."""

    def __init__(self, proc: MeshProcess, port: int) -> None:
        self.proc = proc
        self.port = port

    def get(
        self,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        host: str = "shop.test",
        method: str = "GET",
    ) -> Response:
        with HttpConnection(self.port) as conn:
            conn.request(method, target, headers or [], host=host)
            return conn.read_response(method)


def start_gateway(
    log_dir: Path, config: dict[str, Any], name: str = "gateway", wait_ready: bool = True
) -> Gateway:
    if "ingress" in config:
        port = int(config["ingress"]["listen"].rsplit(":", 1)[1])
    else:
        port = free_port()
        config = {"ingress": {"listen": f"127.0.0.1:{port}"}, **config}
    path = write_yaml(log_dir / f"{name}.yaml", config)
    admin = free_port()
    proc = MeshProcess(
        ["gateway", "--config", str(path), "--admin", f"127.0.0.1:{admin}"], log_dir, name
    )
    gateway = Gateway(proc, port)
    if wait_ready:
        try:
            proc.wait_ready()
        except BaseException:
            stop(proc)
            raise
    return gateway


def stop(proc: MeshProcess) -> None:
    if proc.proc.poll() is None:
        proc.proc.kill()
        proc.proc.wait(5)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def jwks_server(keys: Keys) -> Iterator[JwksServer]:
    server = JwksServer(keys.jwks())
    yield server
    server.close()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, RecordingUpstream]]:
    """One recording upstream per shop service."""
    names = ("users", "products", "orders", "admin", "public", "reports")
    started = {name: RecordingUpstream() for name in names}
    yield started
    for upstream in started.values():
        upstream.close()


def catalog_for(log_dir: Path, upstreams: dict[str, RecordingUpstream]) -> Path:
    return write_yaml(
        log_dir / "catalog.yaml",
        {"services": {name: [f"127.0.0.1:{u.port}"] for name, u in upstreams.items()}},
    )


def nothing_reached(*upstreams: RecordingUpstream) -> bool:
    return all(u.raw_bytes_total() == 0 and not u.requests for u in upstreams)
