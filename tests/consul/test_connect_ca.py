"""Certificates from Consul's Connect CA, and a CA rotation under traffic.

    Traffic -> caller sidecar `a` (local port) --mTLS--> sidecar of `api` -> app
                 both with --tls-source consul: leaves and roots from the agent

The rotation test runs its own agent (it changes the CA configuration) and checks that
every request succeeds while both sidecars move to leaves from the new root, and that new
sidecar-to-sidecar connections after the rotation work with the new leaves.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.consul.connect import (
    active_root,
    consul_id,
    consul_leaf,
    rotate_ca,
    trust_domain,
)
from tests.consul.helpers import Traffic, start_caller, start_instance, wait_endpoints
from tests.support.certs import server_serial
from tests.support.consul_agent import ConsulAgent
from tests.support.processes import MeshProcess, wait_until

TLS = ("--tls-source", "consul")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def serial(proc: MeshProcess) -> str:
    return str(proc.admin("/certs")["serial"])


@pytest.mark.timeout(60)
def test_leaf_comes_from_consul_in_its_trust_domain(
    tmp_path: Path, procs: list[MeshProcess], consul_agent: ConsulAgent
) -> None:
    service = unique("api")
    api = start_instance(procs, tmp_path, consul_agent.http_addr, service, "api", *TLS)
    caller, port = start_caller(procs, tmp_path, consul_agent.http_addr, service, *TLS)
    wait_endpoints(caller, service, [api.address])

    domain = trust_domain(consul_agent)
    assert domain.endswith(".consul")
    certs = api.sidecar.admin("/certs")
    assert certs["identity"] == f"spiffe://{domain}/ns/default/dc/dc1/svc/{service}"
    assert caller.admin("/certs")["identity"] == consul_id(consul_agent, "a")
    # The listener presents the leaf the agent issued for the service.
    issued = consul_leaf(consul_agent, service, tmp_path / "issued")
    prober = consul_leaf(consul_agent, unique("prober"), tmp_path / "prober")
    assert server_serial(api.port, prober.context()) == issued.serial
    assert int(certs["serial"], 16) == issued.serial

    traffic = Traffic(port, rate=100).start()
    wait_until(lambda: traffic.total >= 20, 10, "20 requests through the pair")
    traffic.stop()
    assert traffic.failures == []
    xfcc = api.app.requests[-1].header("x-forwarded-client-cert")
    assert xfcc == f"By={certs['identity']};URI={consul_id(consul_agent, 'a')}"


@pytest.mark.timeout(120)
def test_ca_rotation_in_consul_drops_no_request(
    tmp_path: Path, procs: list[MeshProcess], consul_binary: str
) -> None:
    with ConsulAgent(consul_binary) as agent:
        url = agent.http_addr
        api = start_instance(procs, tmp_path, url, "api", "api", *TLS, wait_ready=False)
        caller, port = start_caller(procs, tmp_path, url, "api", *TLS, wait_ready=False)
        for proc in (api.sidecar, caller):
            proc.wait_ready()
        wait_endpoints(caller, "api", [api.address])
        before = {"api": serial(api.sidecar), "a": serial(caller)}
        old_root = active_root(agent)

        traffic = Traffic(port, rate=200, threads=4).start()
        try:
            wait_until(lambda: traffic.total >= 200, 15, "200 requests before the rotation")
            rotated_at = time.monotonic()
            rotate_ca(agent)
            wait_until(lambda: active_root(agent) != old_root, 10, "consul to switch roots")
            # Consul re-issues leaves after a root change with up to ~20 s of jitter.
            wait_until(
                lambda: serial(api.sidecar) != before["api"] and serial(caller) != before["a"],
                45,
                "both sidecars to load leaves from the new root",
            )
            took = time.monotonic() - rotated_at
            accepted = api.sidecar.admin("/listeners")["inbound"]["accepted"]
            # More concurrency than before: the caller's pool opens new connections, each a
            # handshake between the two new leaves.
            more = Traffic(port, rate=200, threads=8).start()
            try:
                wait_until(lambda: more.total >= 400, 20, "400 requests after the rotation")
            finally:
                more.stop()
        finally:
            traffic.stop()
        assert traffic.failures == [], traffic.failures[:5]
        assert more.failures == [], more.failures[:5]
        assert api.sidecar.admin("/listeners")["inbound"]["accepted"] > accepted
        # New handshakes show a leaf of the new root.
        prober = consul_leaf(agent, "prober", tmp_path / "prober")
        assert server_serial(api.port, prober.context()) == int(serial(api.sidecar), 16)
        print(f"rotation: {traffic.total + more.total} requests, new leaves after {took:.1f}s")
