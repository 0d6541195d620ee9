"""Consul Connect for tests: leaves from the agent's CA on disk, CA rotation, intentions by curl.

Sidecars here run with `--tls-source consul`: their certificates come from the agent, and
intentions decide who may call them.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.consul_agent import ConsulAgent

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CURL = shutil.which("curl") or "curl"


def consul_call(agent: ConsulAgent, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(agent.http_addr + path, data=data, method=method)
    with _OPENER.open(request, timeout=10) as response:
        text = response.read()
    return json.loads(text) if text.strip() else None


def trust_domain(agent: ConsulAgent) -> str:
    return str(agent.get_json("/v1/agent/connect/ca/roots")["TrustDomain"]).lower()


def consul_id(agent: ConsulAgent, service: str) -> str:
    return f"spiffe://{trust_domain(agent)}/ns/default/dc/dc1/svc/{service}"


@dataclass(frozen=True)
class ConsulLeaf:
    """A leaf the agent issued, written out as files (for curl and ssl clients)."""

    cert: Path
    key: Path
    roots: Path
    serial: int

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # peers are named by SPIFFE ID
        ctx.load_verify_locations(cafile=str(self.roots))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


def consul_leaf(agent: ConsulAgent, service: str, directory: Path) -> ConsulLeaf:
    leaf = agent.get_json(f"/v1/agent/connect/ca/leaf/{service}")
    roots = agent.get_json("/v1/agent/connect/ca/roots")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, bundle = directory / "cert.pem", directory / "key.pem", directory / "roots.pem"
    cert.write_text(leaf["CertPEM"])
    key.write_text(leaf["PrivateKeyPEM"])
    key.chmod(0o600)
    bundle.write_text("\n".join(r["RootCert"] for r in roots["Roots"]))
    return ConsulLeaf(cert, key, bundle, int(leaf["SerialNumber"].replace(":", ""), 16))


def active_root(agent: ConsulAgent) -> str:
    return str(agent.get_json("/v1/agent/connect/ca/roots")["ActiveRootID"])


def rotate_ca(agent: ConsulAgent) -> None:
    """A new root key for the built-in CA provider: Consul makes a new root, cross-signs it
    with the old one, and re-issues every leaf."""
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    config = {"Provider": "consul", "Config": {"PrivateKey": key.decode(), "LeafCertTTL": "72h"}}
    consul_call(agent, "PUT", "/v1/connect/ca/configuration", config)


def curl(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    """curl with no proxy from the environment, bounded in time."""
    return subprocess.run(
        [CURL, "--silent", "--show-error", "--noproxy", "*", "--max-time", str(timeout), *args],
        capture_output=True,
        text=True,
        timeout=timeout + 5,
        check=False,
    )


def curl_intention(agent: ConsulAgent, source: str, destination: str, action: str) -> str:
    """Create an intention with curl, as an operator would; its ID."""
    body = json.dumps({"SourceName": source, "DestinationName": destination, "Action": action})
    done = curl("-X", "POST", "--data", body, f"{agent.http_addr}/v1/connect/intentions")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["ID"])


def curl_delete_intention(agent: ConsulAgent, intention_id: str) -> None:
    done = curl("-X", "DELETE", f"{agent.http_addr}/v1/connect/intentions/{intention_id}")
    assert done.returncode == 0, done.stderr
