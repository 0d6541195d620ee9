"""The built-in certificate authority, for meshes without Consul and for the local demo.

`init` makes an EC P-256 root for a trust domain; `issue` makes a short-lived leaf whose only
name is the service's SPIFFE ID (a URI SAN). The root key stays with whoever runs the CA: a
sidecar gets its leaf, its key and the roots, and reloads them when the files change.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.identity.spiffe import service_id

ROOT_CERT, ROOT_KEY, CA_INFO = "root.pem", "root.key", "ca.json"
LEAF_CERT, LEAF_KEY, ROOTS = "cert.pem", "key.pem", "roots.pem"
#: Leaves are backdated a little so peers with a slightly slow clock accept them at once.
BACKDATE = dt.timedelta(minutes=1)


class CaError(Exception):
    """The CA directory is missing, incomplete or unreadable; the message says which."""


@dataclass(frozen=True)
class IssuedLeaf:
    cert: Path
    key: Path
    roots: Path
    identity: str
    serial: int
    not_after: dt.datetime


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write a key readable by its owner only, replacing any old file atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


#: What a SPIFFE ID can carry here (see mesh.identity.spiffe): lower-case DNS-like trust
#: domains, and service names without path or URI syntax.
_TRUST_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9.\-]{0,251}[a-z0-9])?")
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
#: Leaves longer-lived than this defeat the point of short-lived certificates.
MAX_LEAF_TTL = dt.timedelta(days=366)


def init(directory: Path, trust_domain: str, valid_days: int = 3650) -> Path:
    """Create a root CA in `directory`; refuses to overwrite an existing one."""
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise CaError(f"trust domain {trust_domain!r}: use lower-case letters, digits, '.', '-'")
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / ROOT_KEY).exists():
        raise CaError(f"{directory} already holds a CA ({ROOT_KEY} exists)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} mesh root")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.NameConstraints(
                # RFC 5280: a URI constraint names the host part (the trust domain).
                permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain)],
                excluded_subtrees=None,
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        directory / ROOT_KEY,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_public(directory / ROOT_CERT, cert.public_bytes(serialization.Encoding.PEM))
    _write_public(directory / CA_INFO, json.dumps({"trust_domain": trust_domain}).encode())
    return directory / ROOT_CERT


def _load(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, str]:
    try:
        key = serialization.load_pem_private_key((directory / ROOT_KEY).read_bytes(), None)
        cert = x509.load_pem_x509_certificate((directory / ROOT_CERT).read_bytes())
        info = json.loads((directory / CA_INFO).read_text())
    except (OSError, ValueError) as exc:
        raise CaError(f"cannot read the CA in {directory}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{directory / ROOT_KEY} is not an EC key")
    return key, cert, str(info["trust_domain"])


def issue(
    ca_dir: Path,
    service: str,
    out_dir: Path,
    ttl: dt.timedelta = dt.timedelta(hours=24),
    datacenter: str = "dc1",
) -> IssuedLeaf:
    """Issue a leaf for `service` into `out_dir` (cert.pem, key.pem, roots.pem).

    Files are replaced atomically, key first, so a sidecar watching them never pairs a new
    certificate with an old key for longer than one reload.
    """
    if not _SERVICE.fullmatch(service):
        raise CaError(f"service name {service!r}: use letters, digits, '_', '.', '-'")
    if not _SERVICE.fullmatch(datacenter):
        raise CaError(f"datacenter {datacenter!r}: use letters, digits, '_', '.', '-'")
    if not dt.timedelta(minutes=1) <= ttl <= MAX_LEAF_TTL:
        raise CaError(f"ttl {ttl}: between 1 minute and {MAX_LEAF_TTL.days} days")
    ca_key, ca_cert, trust_domain = _load(ca_dir)
    identity = service_id(service, trust_domain, datacenter).uri
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = now + ttl
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_private(
        out_dir / LEAF_KEY,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_public(out_dir / LEAF_CERT, cert.public_bytes(serialization.Encoding.PEM))
    _write_public(out_dir / ROOTS, ca_cert.public_bytes(serialization.Encoding.PEM))
    return IssuedLeaf(
        out_dir / LEAF_CERT, out_dir / LEAF_KEY, out_dir / ROOTS, identity,
        cert.serial_number, not_after,
    )  # fmt: skip
