"""The gateway discovers services through a real Consul agent, like a sidecar does."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.consul.helpers import SETTINGS, start_instance
from tests.gateway.conftest import start_gateway, stop
from tests.support.consul_agent import ConsulAgent
from tests.support.processes import MeshProcess

pytestmark = pytest.mark.timeout(60)


def test_routes_reach_services_found_in_consul(
    tmp_path: Path, procs: list[MeshProcess], consul_agent: ConsulAgent
) -> None:
    service = f"catalog-{uuid.uuid4().hex[:8]}"
    instance = start_instance(procs, tmp_path, consul_agent.http_addr, service, "c1")
    gateway = start_gateway(
        tmp_path,
        {
            "consul": {"address": consul_agent.http_addr, **SETTINGS},
            "routes": [{"prefix": "/catalog", "service": service}],
        },
    )
    try:
        response = gateway.get("/catalog/1")
        assert (response.status, response.body) == (200, b"c1")
        assert instance.app.requests[0].target == "/catalog/1"
        clusters = gateway.proc.admin("/clusters")
        assert [e["address"] for e in clusters[service]["endpoints"]] == [instance.address]
    finally:
        stop(gateway.proc)
