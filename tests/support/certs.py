"""Certificates for mTLS tests: a mesh CA made by the product, and hand-made misfits.

`Pki` owns one built-in CA directory (made with `mesh.identity.ca.init`) and issues leaves
from it the way `mesh ca issue` does. `craft_leaf` signs leaves the CA itself would never
issue (expired, not yet valid, a DNS name instead of a SPIFFE ID) with the same root key,
so the chain is valid and only the property under test is wrong.

    pki = Pki(tmp_path / "pki")
    app = pki.issue("app")                       # cert.pem, key.pem, roots.pem
    ctx = client_context(pki.issue("client"))    # a caller presenting that leaf
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.identity import ca

TRUST_DOMAIN = "mesh.local"


def spiffe_id(service: str, trust_domain: str = TRUST_DOMAIN) -> str:
    return f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/{service}"


@dataclass(frozen=True)
class Leaf:
    """A directory holding cert.pem, key.pem and roots.pem, as `mesh ca issue` writes it."""

    dir: Path

    @property
    def cert(self) -> Path:
        return self.dir / ca.LEAF_CERT

    @property
    def key(self) -> Path:
        return self.dir / ca.LEAF_KEY

    @property
    def roots(self) -> Path:
        return self.dir / ca.ROOTS

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert.read_bytes())

    @property
    def serial(self) -> int:
        return self.certificate().serial_number

    def flags(self) -> list[str]:
        """The sidecar flags that turn on mTLS with this leaf."""
        return [
            "--tls-cert",
            str(self.cert),
            "--tls-key",
            str(self.key),
            "--tls-roots",
            str(self.roots),
        ]


class Pki:
    """One mesh CA on disk and the leaves issued from it."""

    def __init__(self, directory: Path, trust_domain: str = TRUST_DOMAIN) -> None:
        self.dir = directory
        self.ca_dir = directory / "ca"
        self.trust_domain = trust_domain
        ca.init(self.ca_dir, trust_domain)

    @property
    def root_cert(self) -> Path:
        return self.ca_dir / ca.ROOT_CERT

    def root(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = serialization.load_pem_private_key((self.ca_dir / ca.ROOT_KEY).read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        cert = x509.load_pem_x509_certificate(self.root_cert.read_bytes())
        return key, cert

    def issue(self, service: str, name: str | None = None) -> Leaf:
        """A leaf for `service` in `<dir>/<name or service>`, as `mesh ca issue` makes it."""
        out = self.dir / (name or service)
        ca.issue(self.ca_dir, service, out)
        return Leaf(out)

    def craft(
        self,
        name: str,
        *,
        uris: tuple[str, ...] = (),
        dns: tuple[str, ...] = (),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Leaf:
        """A leaf signed by this CA's root with exactly the given names and validity."""
        key, root = self.root()
        return craft_leaf(
            self.dir / name,
            key,
            root,
            uris=uris,
            dns=dns,
            not_before=not_before,
            not_after=not_after,
        )


def craft_leaf(
    out: Path,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate,
    *,
    uris: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Leaf:
    """Write cert.pem, key.pem and roots.pem (the issuer) for a hand-made leaf."""
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, out.name)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    out.mkdir(parents=True, exist_ok=True)
    leaf = Leaf(out)
    leaf.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    leaf.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    leaf.roots.write_bytes(issuer.public_bytes(serialization.Encoding.PEM))
    return leaf


def client_context(
    leaf: Leaf | None,
    roots: Path | None = None,
    *,
    version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A caller's context: presents `leaf` (None: no certificate), trusts the mesh roots.

    Names are SPIFFE IDs, not host names, so host name checking is off; the chain is
    still verified. `version` pins the protocol (e.g. TLS 1.2 only).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(roots or (leaf.roots if leaf else None)))
    if leaf is not None:
        ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def server_serial(
    port: int, context: ssl.SSLContext, server_name: str | None = None, timeout: float = 5.0
) -> int:
    """The serial number of the certificate a TLS listener presents to a new handshake
    (with SNI `server_name`, or without SNI)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
