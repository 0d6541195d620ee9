"""Sidecars finding each other through a real Consul agent, while instances come and go.

Topology: two instances of a service (each an app behind its sidecar, registered in Consul)
and a caller `a` whose sidecar has a local port for the service. Time bounds come from the
quick settings in helpers.SETTINGS (health checked every 0.5 s, drain grace 1 s).
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.consul.helpers import (
    SETTINGS,
    Instance,
    Traffic,
    endpoints,
    start_caller,
    start_instance,
    wait_endpoints,
)
from tests.sidecar.helpers import refuses
from tests.support.consul_agent import ConsulAgent
from tests.support.processes import MeshProcess, wait_until

pytestmark = pytest.mark.timeout(60)


def unique(prefix: str) -> str:
    # The agent is shared by the session: every test names its own service.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def two_instances_and_a_caller(
    tmp_path: Path, procs: list[MeshProcess], url: str, service: str
) -> tuple[Instance, Instance, MeshProcess, int]:
    """b1, b2 and the caller, started together; returned once the caller sees both."""
    b1 = start_instance(procs, tmp_path, url, service, "b1", wait_ready=False)
    b2 = start_instance(procs, tmp_path, url, service, "b2", wait_ready=False)
    caller, port = start_caller(procs, tmp_path, url, service, wait_ready=False)
    for proc in (b1.sidecar, b2.sidecar, caller):
        proc.wait_ready()
    wait_endpoints(caller, service, [b1.address, b2.address])
    return b1, b2, caller, port


def test_calls_spread_over_both_instances(
    tmp_path: Path, procs: list[MeshProcess], consul_agent: ConsulAgent
) -> None:
    service = unique("b")
    _, _, caller, port = two_instances_and_a_caller(
        tmp_path, procs, consul_agent.http_addr, service
    )

    traffic = Traffic(port, rate=200).start()
    wait_until(lambda: traffic.total >= 200, 10, "200 requests")
    traffic.stop()
    assert traffic.failures == []
    # P2C spreads evenly over equal instances; each must take a real share.
    assert traffic.answers["b1"] >= 0.25 * traffic.total, traffic.answers
    assert traffic.answers["b2"] >= 0.25 * traffic.total, traffic.answers
    identity = caller.admin("/clusters")[service]["endpoints"][0]["identity"]
    assert identity.startswith("spiffe://") and identity.endswith(
        f"/ns/default/dc/dc1/svc/{service}"
    )


def test_instance_whose_app_dies_leaves_rotation_within_the_check_interval_plus_1s(
    tmp_path: Path, procs: list[MeshProcess], consul_agent: ConsulAgent
) -> None:
    service = unique("b")
    b1, b2, caller, port = two_instances_and_a_caller(
        tmp_path, procs, consul_agent.http_addr, service
    )

    b1.app.close()  # the app is gone; its sidecar lives on and reports it
    took = wait_endpoints(caller, service, [b2.address], timeout=5)
    assert took <= SETTINGS["check_interval"] + 1.0, took

    traffic = Traffic(port, rate=200).start()
    wait_until(lambda: traffic.total >= 50, 10, "50 requests")
    traffic.stop()
    assert traffic.failures == [] and set(traffic.answers) == {"b2"}
    # Its sidecar says why, in Consul and in its log.
    assert "is critical" in b1.sidecar.logs()


def test_sigterm_of_one_instance_during_steady_traffic_fails_no_request(
    tmp_path: Path, procs: list[MeshProcess], consul_agent: ConsulAgent
) -> None:
    service = unique("b")
    b1, b2, caller, port = two_instances_and_a_caller(
        tmp_path, procs, consul_agent.http_addr, service
    )

    traffic = Traffic(port, rate=200).start()
    wait_until(lambda: traffic.answers["b2"] >= 20, 10, "b2 to take traffic")
    b2.sidecar.signal(signal.SIGTERM)
    signalled = time.monotonic()
    left_rotation = listener_closed = None
    deadline = signalled + 15
    while b2.sidecar.proc.poll() is None and time.monotonic() < deadline:
        now = time.monotonic()
        if left_rotation is None and endpoints(caller, service) == [b1.address]:
            left_rotation = now
        if listener_closed is None and refuses(b2.port):
            listener_closed = now
        time.sleep(0.02)  # polling the two observable states above
    assert b2.sidecar.proc.wait(5) == 0, b2.sidecar.logs()
    if listener_closed is None:  # it closed and the process exited between two polls
        listener_closed = time.monotonic()
    served_by_b2 = traffic.answers["b2"]
    wait_until(lambda: traffic.total >= served_by_b2 + 100, 10, "traffic after the exit")
    traffic.stop()

    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.answers["b2"] == served_by_b2  # nothing reached b2 after it left
    # Peers saw it leave before its listener closed: the caller dropped it, and only after
    # the drain grace did it stop accepting.
    assert left_rotation is not None
    assert left_rotation < listener_closed
    assert listener_closed - signalled >= 0.9 * SETTINGS["drain_grace"]
    services = consul_agent.get_json("/v1/agent/services")
    assert not any(
        s["Service"].startswith(service) and str(b2.port) in s["ID"] for s in services.values()
    )


def test_agent_stop_and_restart_during_traffic(
    tmp_path: Path, procs: list[MeshProcess], consul_binary: str
) -> None:
    with ConsulAgent(consul_binary) as agent:
        url = agent.http_addr
        b1 = start_instance(procs, tmp_path, url, "b", "b1")
        caller, port = start_caller(procs, tmp_path, url, "b")
        wait_endpoints(caller, "b", [b1.address])
        traffic = Traffic(port, rate=100).start()
        wait_until(lambda: traffic.total >= 20, 10, "traffic")

        agent.stop()
        wait_until(
            lambda: caller.admin("/clusters")["b"]["stale_since"] is not None, 10, "staleness"
        )
        cluster = caller.admin("/clusters")["b"]
        assert "ConnectError" in cluster["last_error"] or "Disconnected" in cluster["last_error"]
        during = traffic.total
        wait_until(lambda: traffic.total >= during + 100, 10, "traffic with the agent down")
        assert traffic.failures == [], traffic.failures[:5]
        assert caller.admin("/ready")["ready"] is True

        # A restarted dev agent is a new cluster (new CA and trust domain, indexes from low).
        agent.start()
        wait_until(
            lambda: caller.admin("/clusters")["b"]["stale_since"] is None, 15, "fresh answers"
        )
        wait_until(lambda: registered_and_passing(agent, b1), 10, "b1 registered and passing")
        b2 = start_instance(procs, tmp_path, url, "b", "b2")
        wait_endpoints(caller, "b", [b1.address, b2.address])
        wait_until(lambda: traffic.answers["b2"] >= 20, 10, "traffic to the new instance")
        traffic.stop()
        assert traffic.failures == [], traffic.failures[:5]
        trust_domain = agent.get_json("/v1/agent/connect/ca/roots")["TrustDomain"]
        identities = {e["identity"] for e in caller.admin("/clusters")["b"]["endpoints"]}
        assert identities == {f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/b"}


def registered_and_passing(agent: ConsulAgent, instance: object) -> bool:
    checks = agent.get_json("/v1/agent/checks")
    mine = [c for c in checks.values() if c["ServiceName"] in ("b", "b-sidecar-proxy")]
    return len(mine) >= 2 and all(c["Status"] == "passing" for c in mine)
