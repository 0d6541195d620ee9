"""Discovery freshness in /metrics: a real Consul agent answers, then goes away.

While Consul answers, `mesh_discovery_stale` is 0 and the update age is small; once the
agent is stopped the caller keeps its last good endpoints and the gauge says 1.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.consul.helpers import start_caller, start_instance, wait_endpoints
from tests.support.consul_agent import ConsulAgent
from tests.support.processes import MeshProcess, http_get, wait_until

pytestmark = pytest.mark.timeout(60)


def gauge(proc: MeshProcess, name: str, upstream: str) -> float | None:
    _, _, body = http_get(f"http://127.0.0.1:{proc.admin_port}/metrics")
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("upstream") == upstream:
                return float(sample.value)
    return None


def test_stale_discovery_shows_in_metrics(
    consul_binary: str, tmp_path: Path, procs: list[MeshProcess]
) -> None:
    with ConsulAgent(consul_binary) as agent:
        b1 = start_instance(procs, tmp_path, agent.http_addr, "b", "b1")
        caller, _ = start_caller(procs, tmp_path, agent.http_addr, "b")
        wait_endpoints(caller, "b", [b1.address])
        assert gauge(caller, "mesh_discovery_stale", "b") == 0
        assert gauge(caller, "mesh_discovery_answered", "b") == 1
        age = gauge(caller, "mesh_discovery_update_age_seconds", "b")
        assert age is not None and 0 <= age < 30
        assert gauge(caller, "mesh_upstream_endpoints", "b") == 1

        agent.stop()
        wait_until(
            lambda: gauge(caller, "mesh_discovery_stale", "b") == 1,
            15,
            "the caller's metrics to report stale discovery",
            step=0.1,
        )
        # The last good endpoint stays in use.
        assert gauge(caller, "mesh_upstream_endpoints", "b") == 1
