"""sslscan against the inbound mTLS listener: protocol floor and cipher suites (row 23).

The scanner presents a mesh client certificate (`--certs/--pk`); without one it could not
finish a handshake and would not see the TLS 1.2 suites at all. Expected: SSLv2/v3 and
TLS 1.0/1.1 not enabled, TLS 1.2 and 1.3 enabled; every accepted suite an AEAD
(AES-GCM or ChaCha20-Poly1305) with an ephemeral key exchange, so no CBC, RC4, 3DES, NULL
or EXPORT suite and no suite without forward secrecy. `scripts/install-tools` installs
sslscan; the test fails, rather than skips, when it is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.certs import Leaf, Pki
from tests.support.processes import Sidecars, free_port
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.timeout(60)

TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
#: Ephemeral (EC)DH key exchange, then an AEAD: the only TLS 1.2 shape allowed.
TLS12_SUITE = re.compile(
    r"(ECDHE|DHE)-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)"
)
WEAK = ("CBC", "RC4", "DES", "NULL", "EXP", "ANON", "ADH", "AECDH", "MD5", "PSK", "SRP")


@dataclass
class Scan:
    protocols: dict[str, bool]
    ciphers: list[dict[str, str]]
    root: ET.Element


@pytest.fixture(scope="module")
def scan(pki: Pki, sidecars: Sidecars) -> Iterator[Scan]:
    sslscan = shutil.which("sslscan")
    assert sslscan, "sslscan is not installed: run scripts/install-tools"
    with RecordingUpstream() as upstream:
        port = free_port()
        sidecars.start(
            "--service", "app", "--app-port", str(upstream.port),
            "--listen", f"127.0.0.1:{port}", *pki.issue("app").flags(), name="app",
        )  # fmt: skip
        client: Leaf = pki.issue("scanner")
        out = sidecars.log_dir / "sslscan.xml"
        done = subprocess.run(
            [sslscan, "--no-colour", f"--certs={client.cert}", f"--pk={client.key}",
             f"--xml={out}", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=45, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        yield parse(out)
        assert upstream.raw_bytes_total() == 0, "the scanner's probes reached the app"


def test_sslscan_is_installed() -> None:
    assert shutil.which("sslscan"), "sslscan is not installed: run scripts/install-tools"


def parse(path: Path) -> Scan:
    root = ET.parse(path).getroot()
    test = root.find("ssltest")
    assert test is not None, path.read_text()[:2000]
    assert root.find(".//error") is None, path.read_text()[:2000]
    protocols = {
        f"{p.get('type')}{p.get('version')}": p.get("enabled") == "1" for p in test.iter("protocol")
    }
    ciphers = [dict(c.attrib) for c in test.iter("cipher")]
    return Scan(protocols, ciphers, test)


def test_only_tls_12_and_13_are_enabled(scan: Scan) -> None:
    assert scan.protocols == {
        "ssl2": False,
        "ssl3": False,
        "tls1.0": False,
        "tls1.1": False,
        "tls1.2": True,
        "tls1.3": True,
    }


def test_every_suite_is_an_aead_with_forward_secrecy(scan: Scan) -> None:
    by_version: dict[str, set[str]] = {}
    for cipher in scan.ciphers:
        assert cipher["status"] in ("accepted", "preferred"), cipher
        by_version.setdefault(cipher["sslversion"], set()).add(cipher["cipher"])
        name = cipher["cipher"].upper()
        assert not [w for w in WEAK if w in name], f"weak suite offered: {cipher}"
        # sslscan reports the ephemeral key exchange's size for forward-secret suites.
        assert "ecdhebits" in cipher or "dhebits" in cipher, f"no ephemeral key: {cipher}"
    # The client certificate let the scan see both versions' suites.
    assert set(by_version) == {"TLSv1.2", "TLSv1.3"}, by_version
    assert by_version["TLSv1.3"] <= TLS13_SUITES
    for name in by_version["TLSv1.2"]:
        assert TLS12_SUITE.fullmatch(name), f"TLS 1.2 suite outside ECDHE/DHE + AEAD: {name}"


def test_no_renegotiation_and_no_heartbleed(scan: Scan) -> None:
    renegotiation = scan.root.find("renegotiation")
    assert renegotiation is not None
    assert renegotiation.get("supported") == "0"
    heartbleed = list(scan.root.iter("heartbleed"))
    assert heartbleed
    assert all(h.get("vulnerable") == "0" for h in heartbleed)
