"""Consul intentions decide who may call a service, and changes apply without a restart.

    caller sidecar `a` --mTLS (leaves from Consul)--> sidecar of <service> -> app
    curl with a Consul-issued client certificate --> sidecar of <service>

Intentions are written with curl against the real agent. Each test names its own
destination service, so intentions of one test never match another's.
"""

from __future__ import annotations

import http.client
import time
import uuid
from pathlib import Path

import pytest

from tests.consul.connect import (
    ConsulLeaf,
    consul_id,
    consul_leaf,
    curl,
    curl_delete_intention,
    curl_intention,
)
from tests.consul.helpers import SETTINGS, Instance, start_caller, start_instance, wait_endpoints
from tests.identity.conftest import LogWatch
from tests.support.consul_agent import ConsulAgent
from tests.support.processes import MeshProcess, wait_until, write_yaml

pytestmark = pytest.mark.timeout(60)

TLS = ("--tls-source", "consul")
#: A changed intention applies to new requests within this long.
APPLY_WITHIN = 3.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def call(port: int) -> tuple[int, str]:
    """One request through the caller sidecar: (status, x-mesh-error)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("x-mesh-error", "")
    finally:
        conn.close()


def pair(
    tmp_path: Path, procs: list[MeshProcess], agent: ConsulAgent, *extra: str
) -> tuple[Instance, MeshProcess, int]:
    service = unique("api")
    api = start_instance(
        procs, tmp_path, agent.http_addr, service, "api", *TLS, *extra, wait_ready=False
    )
    caller, port = start_caller(procs, tmp_path, agent.http_addr, service, *TLS, wait_ready=False)
    for proc in (api.sidecar, caller):
        proc.wait_ready()
    wait_endpoints(caller, service, [api.address])
    return api, caller, port


def wait_status(port: int, status: int, what: str) -> float:
    started = time.monotonic()
    wait_until(lambda: call(port)[0] == status, APPLY_WITHIN, what, step=0.05)
    return time.monotonic() - started


def test_intention_added_with_curl_blocks_the_next_calls_and_deleting_it_lets_them_through(
    tmp_path: Path, procs: list[MeshProcess], consul_agent: ConsulAgent
) -> None:
    api, _, port = pair(tmp_path, procs, consul_agent)
    service = api.sidecar.admin("/certs")["identity"].rsplit("/", 1)[1]
    # Dev mode has ACLs off: with no intention, Consul's default is allow.
    assert call(port) == (200, "")

    watch = LogWatch(api.sidecar)
    deny = curl_intention(consul_agent, "a", service, "deny")
    took = wait_status(port, 403, "the deny intention to apply")
    api.app.reset()
    assert call(port) == (403, "forbidden")
    assert api.app.requests == [] and api.app.raw_bytes_total() == 0
    line = watch.wait_for("denied", consul_id(consul_agent, "a"), consul_id(consul_agent, service))
    assert f"intention a -> {service} says deny" in line

    curl_delete_intention(consul_agent, deny)
    took = max(took, wait_status(port, 200, "the deletion to apply"))
    assert len(api.app.requests) >= 1

    # Precedence: an exact source beats the wildcard, whichever was written first.
    wildcard = curl_intention(consul_agent, "*", service, "deny")
    wait_status(port, 403, "the wildcard deny to apply")
    exact = curl_intention(consul_agent, "a", service, "allow")
    took = max(took, wait_status(port, 200, "the exact allow to win over the wildcard"))
    for intention in (wildcard, exact):
        curl_delete_intention(consul_agent, intention)
    print(f"intention changes applied within {took:.2f}s")


def test_local_allow_list_wins_over_a_deny_intention(
    tmp_path: Path, procs: list[MeshProcess], consul_agent: ConsulAgent
) -> None:
    # The last --config wins: this one repeats the quick Consul settings.
    config = write_yaml(
        tmp_path / "auth.yaml", {"authorization": {"allow": ["a"]}, "consul": SETTINGS}
    )
    api, _, port = pair(tmp_path, procs, consul_agent, "--config", str(config))
    service = api.sidecar.admin("/certs")["identity"].rsplit("/", 1)[1]
    curl_intention(consul_agent, "*", service, "deny")
    # Another caller identity is refused by the wildcard...
    intruder = consul_leaf(consul_agent, "intruder", tmp_path / "intruder")
    wait_until(
        lambda: _curl_status(api, intruder) == "403 forbidden",
        APPLY_WITHIN,
        "the wildcard deny to refuse the intruder",
    )
    # ...while `a`, on the local allow list, still gets through.
    assert call(port) == (200, "")


def _curl_status(api: Instance, leaf: ConsulLeaf) -> str:
    """curl presenting `leaf`: "<status> <x-mesh-error>"."""
    done = curl(
        "--insecure",  # the server is named by SPIFFE ID, which curl cannot check
        "--cert", str(leaf.cert), "--key", str(leaf.key),
        "--output", "/dev/null",
        "--write-out", "%{http_code}",
        "--dump-header", "-",
        f"https://{api.address}/",
    )  # fmt: skip
    status = done.stdout[-3:]
    reason = ""
    for line in done.stdout.splitlines():
        if line.lower().startswith("x-mesh-error:"):
            reason = line.split(":", 1)[1].strip()
    return f"{status} {reason}".strip()


def test_curl_with_a_valid_certificate_but_a_denied_identity_gets_403(
    tmp_path: Path, procs: list[MeshProcess], consul_agent: ConsulAgent
) -> None:
    service = unique("api")
    api = start_instance(procs, tmp_path, consul_agent.http_addr, service, "api", *TLS)
    outsider = consul_leaf(consul_agent, "outsider", tmp_path / "outsider")
    # Not a mesh sidecar, but its certificate is valid: allowed by default...
    assert _curl_status(api, outsider) == "200"
    # ...and refused once an intention says so, with nothing reaching the app.
    intention = curl_intention(consul_agent, "outsider", service, "deny")
    wait_until(
        lambda: _curl_status(api, outsider) == "403 forbidden",
        APPLY_WITHIN,
        "curl to be refused",
    )
    api.app.reset()
    assert _curl_status(api, outsider) == "403 forbidden"
    assert api.app.requests == [] and api.app.raw_bytes_total() == 0
    curl_delete_intention(consul_agent, intention)
