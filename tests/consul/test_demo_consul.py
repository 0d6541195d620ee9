"""`mesh demo --discovery consul`: the local demo on a real Consul agent it starts itself.

Every sidecar registers in the agent and finds its peers through it; at the end the sidecars
deregister, the agent is stopped by PID, and no process the demo started is left.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidecar.demo.topology import SERVICES
from tests.sidecar.helpers import descendants, start_time, still_running, stop_leftovers
from tests.support.processes import MeshProcess, wait_until

pytestmark = pytest.mark.timeout(60)


def test_demo_runs_on_a_real_agent_and_cleans_up(
    tmp_path: Path, procs: list[MeshProcess], consul_binary: str
) -> None:
    demo = MeshProcess(
        ["demo", "--discovery", "consul", "--duration", "3", "--rps", "10"], tmp_path, "demo"
    )
    procs.append(demo)
    output = demo.stdout_path.read_text
    seen: dict[int, int] = {}

    def everything_started() -> bool:
        if demo.proc.poll() is not None:
            raise AssertionError(f"the demo exited early:\n{output()}\n{demo.logs()}")
        for pid in descendants(demo.proc.pid):
            if (started := start_time(pid)) is not None:
                seen.setdefault(pid, started)
        return "== sending" in output()

    try:
        wait_until(everything_started, 40, "the demo's load to start", step=0.1)
        # The agent, per service its `mesh attach` and app, and the gateway.
        assert len(seen) >= 1 + 2 * len(SERVICES) + 1, seen
        assert demo.proc.wait(40) == 0, f"{output()}\n{demo.logs()}"
        text = output()
        agent = re.search(r"started consul agent (http://127\.0\.0\.1:\d+)\s+\(pid (\d+)\)", text)
        assert agent is not None, text
        assert int(agent[2]) in seen
        names = ", ".join(s.name for s in SERVICES)
        assert f"consul   {names} registered, passing" in text
        # The first calls may race a sidecar's Consul watch: the warm-up absorbs them.
        assert "warm-up  every route answers through the gateway" in text, text
        summary = re.search(r"requests sent (\d+), ok (\d+), errors (.+)", text)
        assert summary is not None and int(summary[2]) > 0 and summary[3] == "none", text
        assert "consul registrations left: 0" in text
        assert f"consul agent stopped (pid {agent[2]})" in text
        assert text.rstrip().endswith("all demo processes stopped")
        left = [pid for pid, started in seen.items() if still_running(pid, started)]
        assert left == []
    finally:
        stop_leftovers(seen)
