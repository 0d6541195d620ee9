"""The gateway in the mesh: it calls services through their sidecars over mTLS under its
own identity, so the upstream sidecars' authorization decides what it may reach; outside
clients may use HTTPS with the gateway's public certificate and no client certificate.

    client --HTTPS--> gateway --mTLS as .../svc/gateway--> users sidecar --> app
                              --mTLS as .../svc/gateway--> vault sidecar (denies the gateway)
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.gateway.conftest import Gateway, start_gateway, stop
from tests.support.certs import Pki, server_serial, spiffe_id
from tests.support.processes import MeshProcess, Sidecars, free_port, wait_until, write_yaml
from tests.support.tlsclient import TlsHttpConnection
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.timeout(90)


def public_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    """A self-signed server certificate for `host`, as a public CA would issue it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "public-cert.pem", directory / "public-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Mesh:
    gateway: Gateway
    https_port: int
    public_cert: Path
    users_app: RecordingUpstream
    vault_app: RecordingUpstream
    users: MeshProcess
    vault: MeshProcess

    def https(self) -> TlsHttpConnection:
        context = ssl.create_default_context(cafile=str(self.public_cert))
        context.check_hostname = False  # the test connects to 127.0.0.1; the chain is checked
        return TlsHttpConnection(self.https_port, context)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    log_dir = tmp_path_factory.mktemp("mesh")
    pki = Pki(log_dir / "pki")
    group = Sidecars(log_dir)
    gateway: Gateway | None = None
    with RecordingUpstream() as users_app, RecordingUpstream() as vault_app:
        try:
            users_port, vault_port = free_port(), free_port()
            users = group.start(
                "--service", "users", "--app-port", str(users_app.port),
                "--listen", f"127.0.0.1:{users_port}", *pki.issue("users").flags(),
                "--config", str(write_yaml(log_dir / "users.yaml", {
                    "authorization": {"default": "deny", "allow": ["gateway"]}})),
                name="users",
            )  # fmt: skip
            vault = group.start(
                "--service", "vault", "--app-port", str(vault_app.port),
                "--listen", f"127.0.0.1:{vault_port}", *pki.issue("vault").flags(),
                "--config", str(write_yaml(log_dir / "vault.yaml", {
                    "authorization": {"default": "allow", "deny": ["gateway"]}})),
                name="vault",
            )  # fmt: skip
            catalog = write_yaml(
                log_dir / "catalog.yaml",
                {"services": {"users": [f"127.0.0.1:{users_port}"],
                              "vault": [f"127.0.0.1:{vault_port}"]}},
            )  # fmt: skip
            leaf = pki.issue("gateway")
            cert, key = public_certificate(log_dir, "shop.test")
            https_port = free_port()
            gateway = start_gateway(
                log_dir,
                {
                    "service": "gateway",
                    "catalog": str(catalog),
                    "tls": {"cert": str(leaf.cert), "key": str(leaf.key), "roots": str(leaf.roots)},
                    "ingress": {
                        "listen": f"127.0.0.1:{free_port()}",
                        "https": {"listen": f"127.0.0.1:{https_port}", "cert": str(cert),
                                  "key": str(key)},
                    },
                    "routes": [
                        {"prefix": "/users", "service": "users"},
                        {"prefix": "/vault", "service": "vault"},
                    ],
                },
            )  # fmt: skip
            yield Mesh(gateway, https_port, cert, users_app, vault_app, users, vault)
        finally:
            if gateway is not None:
                stop(gateway.proc)
            group.stop_all()


def test_the_gateway_reaches_a_service_over_mtls_as_itself(mesh: Mesh) -> None:
    mesh.users_app.reset()
    response = mesh.gateway.get("/users/7")
    assert response.status == 200, response.body
    (request,) = mesh.users_app.requests
    assert request.target == "/users/7"
    assert request.header("x-forwarded-client-cert") == (
        f"By={spiffe_id('users')};URI={spiffe_id('gateway')}"
    )


def test_the_upstream_sidecar_denies_the_gateway_when_policy_says_so(mesh: Mesh) -> None:
    mesh.vault_app.reset()
    response = mesh.gateway.get("/vault/secrets")
    assert response.status == 403
    assert response.get("x-mesh-error") == "forbidden"
    assert mesh.vault_app.raw_bytes_total() == 0


def test_outside_clients_use_https_without_a_client_certificate(mesh: Mesh) -> None:
    mesh.users_app.reset()
    with mesh.https() as conn:
        conn.request("GET", "/users/8", host="shop.test")
        response = conn.read_response()
    assert response.status == 200
    (request,) = mesh.users_app.requests
    assert request.header("x-forwarded-proto") == "https"


def test_a_renewed_public_certificate_is_picked_up(mesh: Mesh, tmp_path: Path) -> None:
    """Renewal replaces the files; new handshakes get the new certificate, no restart."""
    peek = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    peek.check_hostname = False
    peek.verify_mode = ssl.CERT_NONE
    before = server_serial(mesh.https_port, peek)
    cert, key = public_certificate(tmp_path, "shop.test")
    renewed = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
    live_cert, live_key = mesh.public_cert, mesh.public_cert.with_name("public-key.pem")
    os.replace(key, live_key)
    os.replace(cert, live_cert)
    wait_until(
        lambda: server_serial(mesh.https_port, peek) == renewed, 10, "the renewed certificate"
    )
    assert renewed != before
    with mesh.https() as conn:  # trusts the renewed certificate now
        conn.request("GET", "/users/9", host="shop.test")
        assert conn.read_response().status == 200
