"""Registration is real Consul data: a sidecar's app and proxy registrations, read back with
py-consul's plain client and with curl, kept while the agent forgets them, gone on exit."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import consul
import pytest

from tests.consul.helpers import SETTINGS, start_instance
from tests.support.consul_agent import ConsulAgent
from tests.support.processes import MeshProcess, free_port, wait_until

pytestmark = pytest.mark.timeout(40)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def plain_client(agent: ConsulAgent) -> consul.Consul:
    """py-consul's own synchronous client (requests), ignoring any proxy settings."""
    client = consul.Consul(host="127.0.0.1", port=agent.http_port)
    client.http.session.trust_env = False
    return client


def curl_json(agent: ConsulAgent, path: str) -> Any:
    done = subprocess.run(
        ["curl", "--silent", "--fail", "--noproxy", "*", "--max-time", "5",
         f"{agent.http_addr}{path}"],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def persisted_check(agent: ConsulAgent, check_id: str) -> dict[str, Any]:
    """The check definition as the agent persisted it in its data dir."""
    for path in (agent.data_dir / "data" / "checks").iterdir():
        if not path.is_file():
            continue  # the "state" dir holds TTL check states
        stored = json.loads(path.read_text())
        if stored["Check"]["CheckID"] == check_id:
            return dict(stored["ChkType"])
    raise KeyError(check_id)


def test_app_and_sidecar_are_registered_as_consul_data(
    tmp_path: Path, procs: list[MeshProcess], consul_agent: ConsulAgent
) -> None:
    service = unique("orders")
    upstream_port = free_port()
    b = start_instance(
        procs, tmp_path, consul_agent.http_addr, service, "orders",
        "--upstream", f"payments={upstream_port}", weight=3, tags=["v2"],
    )  # fmt: skip
    service_id = f"{service}-{socket.gethostname()}-{b.port}"
    proxy_id = f"{service_id}-sidecar-proxy"
    client = plain_client(consul_agent)
    wait_until(lambda: client.health.connect(service, passing=True)[1] != [], 10, "passing")

    # py-consul's plain client: the agent's view and the health view.
    services = client.agent.services()
    app, proxy = services[service_id], services[proxy_id]
    assert (app["Service"], app["Port"], app["Tags"]) == (service, b.app.port, ["v2"])
    assert proxy["Kind"] == "connect-proxy"
    assert (proxy["Service"], proxy["Port"], proxy["Address"]) == (
        f"{service}-sidecar-proxy", b.port, "127.0.0.1",
    )  # fmt: skip
    assert proxy["Weights"] == {"Passing": 3, "Warning": 1}
    _, [entry] = client.health.connect(service, passing=True)
    assert entry["Service"]["ID"] == proxy_id

    # curl: the proxy registration in full, straight from the agent's HTTP API.
    registered = curl_json(consul_agent, f"/v1/agent/service/{proxy_id}")
    assert registered["Proxy"]["DestinationServiceName"] == service
    assert registered["Proxy"]["DestinationServiceID"] == service_id
    assert registered["Proxy"]["LocalServiceAddress"] == "127.0.0.1"
    assert registered["Proxy"]["LocalServicePort"] == b.app.port
    [upstream] = registered["Proxy"]["Upstreams"]
    assert (upstream["DestinationName"], upstream["LocalBindPort"]) == ("payments", upstream_port)
    assert upstream["LocalBindAddress"] == "127.0.0.1"
    catalog = curl_json(consul_agent, f"/v1/catalog/service/{service}")
    assert [c["ServiceID"] for c in catalog] == [service_id]

    # The health checks: TTL checks the sidecar feeds from its probe of the app, reaped by
    # Consul if the sidecar stops feeding them.
    checks = curl_json(consul_agent, "/v1/agent/checks")
    for check_id in (f"service:{service_id}", f"service:{proxy_id}"):
        assert checks[check_id]["Type"] == "ttl"
        assert checks[check_id]["Status"] == "passing"
        assert f"127.0.0.1:{b.app.port}" in checks[check_id]["Output"]
        stored = persisted_check(consul_agent, check_id)
        assert stored["TTL"] == 10 * 10**9
        assert stored["DeregisterCriticalServiceAfter"] == 60 * 10**9

    # SIGTERM: maintenance first (out of every ?passing answer), then deregistration.
    b.sidecar.signal(signal.SIGTERM)
    wait_until(lambda: client.health.connect(service, passing=True)[1] == [], 5, "maintenance")
    assert proxy_id in client.agent.services(), b.sidecar.logs()
    assert b.sidecar.proc.wait(10) == 0, b.sidecar.logs()
    assert not {service_id, proxy_id} & set(client.agent.services())
    assert not {service_id, proxy_id} & set(curl_json(consul_agent, "/v1/agent/services"))


def test_registration_forgotten_by_the_agent_comes_back(
    tmp_path: Path, procs: list[MeshProcess], consul_agent: ConsulAgent
) -> None:
    service = unique("users")
    b = start_instance(procs, tmp_path, consul_agent.http_addr, service, "users")
    client = plain_client(consul_agent)
    wait_until(lambda: client.health.connect(service, passing=True)[1] != [], 10, "passing")
    ids = [sid for sid, s in client.agent.services().items() if s["Service"].startswith(service)]
    assert len(ids) == 2
    # As an agent that lost its state (wiped data dir, new node) would look to the sidecar.
    for service_id in ids:
        client.agent.service.deregister(service_id)
    assert client.health.connect(service, passing=True)[1] == []
    wait_until(
        lambda: client.health.connect(service, passing=True)[1] != [],
        SETTINGS["check_interval"] + 3,
        "the sidecar to register again",
    )
    assert sorted(sid for sid in client.agent.services() if sid in ids) == sorted(ids)
    assert "registered" in b.sidecar.logs()


def test_sidecar_without_inbound_registers_nothing(
    tmp_path: Path, procs: list[MeshProcess], consul_agent: ConsulAgent
) -> None:
    client = plain_client(consul_agent)
    before = set(client.agent.services())
    caller = MeshProcess.sidecar(
        tmp_path, "--service", unique("cli"), "--proxy-port", str(free_port()),
        "--consul", consul_agent.http_addr, name="cli",
    )  # fmt: skip
    procs.append(caller)
    assert set(client.agent.services()) == before
    assert caller.stop() == 0
