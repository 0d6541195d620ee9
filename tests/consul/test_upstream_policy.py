"""An upstream's owners say how it should be called (its Consul Meta `mesh-policy`); the
caller's own config has the last word."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.consul.helpers import SETTINGS, start_caller, start_instance, wait_endpoints
from tests.support.consul_agent import ConsulAgent
from tests.support.processes import MeshProcess, free_port, wait_until

pytestmark = pytest.mark.timeout(60)

POLICY = {"retry": {"max_retries": 3}, "breaker": {"consecutive_failures": 2}}


def policy_of(caller: MeshProcess, service: str) -> dict[str, Any]:
    cluster = caller.admin("/clusters").get(service)
    return cluster["resilience"]["policy"] if cluster else {}


def test_the_upstreams_meta_sets_its_calling_policy_and_local_config_wins(
    tmp_path: Path, procs: list[MeshProcess], consul_agent: ConsulAgent
) -> None:
    url = consul_agent.http_addr
    service = f"pay-{uuid.uuid4().hex[:8]}"
    instance = start_instance(
        procs, tmp_path, url, service, "p1", meta={"mesh-policy": json.dumps(POLICY)}
    )
    caller, _ = start_caller(procs, tmp_path, url, service)
    wait_endpoints(caller, service, [instance.address])
    wait_until(
        lambda: policy_of(caller, service).get("source") == "defaults+meta+local",
        10,
        "the caller to apply the upstream's Meta",
    )
    policy = policy_of(caller, service)
    assert policy["retry"]["max_retries"] == 3
    assert policy["breaker"]["consecutive_failures"] == 2
    assert policy["meta_problem"] is None

    # A caller whose operator set this upstream's retries keeps them; the Meta fills the rest.
    config = tmp_path / "local.yaml"
    config.write_text(
        yaml.safe_dump({"consul": SETTINGS, "services": {service: {"retry": {"max_retries": 0}}}})
    )
    local, _ = start_caller(procs, tmp_path, url, service, "--config", str(config), name="a2")
    wait_endpoints(local, service, [instance.address])
    wait_until(
        lambda: policy_of(local, service).get("source") == "defaults+meta+local",
        10,
        "the second caller to apply the upstream's Meta",
    )
    policy = policy_of(local, service)
    assert policy["retry"]["max_retries"] == 0
    assert policy["breaker"]["consecutive_failures"] == 2
    assert local.admin("/clusters")[service]["resilience"]["retry"] is None, "no Retry layer"


def test_a_meta_that_does_not_validate_is_ignored_and_shown(
    tmp_path: Path, procs: list[MeshProcess], consul_agent: ConsulAgent
) -> None:
    service = f"pay-{uuid.uuid4().hex[:8]}"
    # Registered by another tool (the sidecar's own config refuses such a Meta).
    registration = {
        "Kind": "connect-proxy",
        "Name": f"{service}-sidecar-proxy",
        "ID": f"{service}-elsewhere",
        "Address": "127.0.0.1",
        "Port": free_port(),
        "Meta": {"mesh-policy": '{"retry": {"max_retries": "many"}}'},
        "Proxy": {"DestinationServiceName": service},
    }
    request = urllib.request.Request(
        consul_agent.http_addr + "/v1/agent/service/register",
        data=json.dumps(registration).encode(),
        method="PUT",
    )
    urllib.request.urlopen(request, timeout=5).close()
    caller, _ = start_caller(procs, tmp_path, consul_agent.http_addr, service)
    wait_until(
        lambda: policy_of(caller, service).get("meta_problem") is not None,
        10,
        "the caller to see the bad Meta",
    )
    policy = policy_of(caller, service)
    assert "max_retries" in policy["meta_problem"]
    assert policy["retry"]["max_retries"] == 1, "defaults kept"
    assert policy["source"] == "defaults+local"
