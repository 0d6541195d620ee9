"""The built-in CA's command line: `mesh ca init` and `mesh ca issue`.

Checks what the files on disk say, read back with `cryptography`: the root is never
overwritten, a leaf carries exactly one name (its SPIFFE ID as a URI SAN), an EC P-256 key
readable by its owner only, roots.pem is the root, and bad input ends with one clear line
and no files.
"""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.processes import MESH, REPO

pytestmark = pytest.mark.timeout(30)


def mesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MESH, *args], capture_output=True, text=True, timeout=15, cwd=REPO, check=False
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA for the module; no test may change it (the refusal test checks that)."""
    directory = tmp_path_factory.mktemp("cli") / "ca"
    done = mesh("ca", "init", str(directory), "--trust-domain", "example.org")
    assert done.returncode == 0, done.stderr
    assert "trust domain example.org" in done.stdout
    return directory


def test_init_makes_an_ec_root_and_refuses_to_overwrite_it(ca_dir: Path) -> None:
    root = x509.load_pem_x509_certificate((ca_dir / "root.pem").read_bytes())
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(root.public_key().curve, ec.SECP256R1)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE((ca_dir / "root.key").stat().st_mode) == 0o600
    before = snapshot(ca_dir)

    again = mesh("ca", "init", str(ca_dir), "--trust-domain", "other.org")
    assert again.returncode == 1
    assert "already holds a CA" in again.stderr and str(ca_dir) in again.stderr
    assert "Traceback" not in again.stderr
    assert snapshot(ca_dir) == before, "a second init changed the CA's files"


def test_issue_writes_a_leaf_with_exactly_its_spiffe_id(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "web"
    started = dt.datetime.now(dt.UTC)
    done = mesh(
        "ca", "issue", "--ca", str(ca_dir), "--service", "web", "--out", str(out), "--ttl", "90m"
    )
    assert done.returncode == 0, done.stderr
    identity = "spiffe://example.org/ns/default/dc/dc1/svc/web"

    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(identity)]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)

    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == public.public_numbers()
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600

    root_pem = (ca_dir / "root.pem").read_bytes()
    assert (out / "roots.pem").read_bytes() == root_pem
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(root_pem))

    lifetime = cert.not_valid_after_utc - started
    assert dt.timedelta(minutes=89) < lifetime < dt.timedelta(minutes=91)
    assert f"{identity}: serial {cert.serial_number:x}" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["cert.pem", "key.pem", "roots.pem"]

    # Re-running rotates: a new key and serial for the same identity, files replaced whole.
    again = mesh("ca", "issue", "--ca", str(ca_dir), "--service", "web", "--out", str(out))
    assert again.returncode == 0, again.stderr
    rotated = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert rotated.serial_number != cert.serial_number
    assert list(rotated.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier(identity)
    ]
    assert (out / "key.pem").read_bytes() != key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert sorted(p.name for p in out.iterdir()) == ["cert.pem", "key.pem", "roots.pem"]


@pytest.mark.parametrize("ttl", ["0h", "5s", "-1h", "1.5h"])
def test_bad_ttl_is_rejected_clearly(ca_dir: Path, tmp_path: Path, ttl: str) -> None:
    out = tmp_path / "web"
    done = mesh(
        "ca", "issue", "--ca", str(ca_dir), "--service", "web", "--out", str(out), f"--ttl={ttl}"
    )
    assert done.returncode == 1
    assert f"--ttl {ttl!r}: expected a number with m, h or d" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_ttl_too_large_is_rejected_clearly(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "web"
    done = mesh(
        "ca",
        "issue",
        "--ca",
        str(ca_dir),
        "--service",
        "web",
        "--out",
        str(out),
        "--ttl",
        "3000000d",
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr[-400:]
    assert "--ttl" in done.stderr
    assert not out.exists()


def test_issue_without_a_ca_names_the_problem(tmp_path: Path) -> None:
    out = tmp_path / "web"
    done = mesh(
        "ca", "issue", "--ca", str(tmp_path / "nowhere"), "--service", "web", "--out", str(out)
    )
    assert done.returncode == 1
    assert "cannot read the CA in" in done.stderr and "nowhere" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("trust_domain", "service"),
    [("not a domain", "web"), ("example.org", "bad/name")],
    ids=["trust-domain", "service"],
)
def test_names_that_form_no_spiffe_id_are_refused(
    tmp_path: Path, trust_domain: str, service: str
) -> None:
    ca_dir = tmp_path / "ca"
    init = mesh("ca", "init", str(ca_dir), "--trust-domain", trust_domain)
    issue = mesh(
        "ca", "issue", "--ca", str(ca_dir), "--service", service, "--out", str(tmp_path / "leaf")
    )
    assert init.returncode != 0 or issue.returncode != 0, (
        f"issued {issue.stdout.strip()!r}, which a sidecar refuses to load"
    )
