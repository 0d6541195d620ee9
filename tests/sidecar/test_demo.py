"""`mesh demo`: the local demo mesh runs, reports, and leaves no process behind.

While it runs every sidecar serves metrics and writes spans that join across services.
Run for a fixed duration, or until SIGINT (Ctrl-C): it exits 0 with a summary of the
requests that succeeded, says "all demo processes stopped", and every process it started
(each service's `mesh attach` and the app under it, and the gateway) is gone afterwards.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from mesh.tracing.spanfile import read_spans, span_files
from sidecar.demo.topology import ENTRY, SERVICES, members
from tests.sidecar.helpers import descendants, start_time, still_running, stop_leftovers
from tests.support.processes import MeshProcess, http_get, wait_until

pytestmark = pytest.mark.timeout(45)

#: One `mesh attach` per service and the app it runs, and the gateway (`mesh gateway`).
EXPECTED_CHILDREN = 2 * len(SERVICES) + 1


def record_children(demo: MeshProcess, timeout: float = 20) -> dict[int, int]:
    """Poll until every demo process is up; PID -> start time of each."""
    found: dict[int, int] = {}

    def all_started() -> bool:
        if demo.proc.poll() is not None:
            raise AssertionError(f"the demo exited early:\n{output(demo)}\n{demo.logs()}")
        for pid in descendants(demo.proc.pid):
            started = start_time(pid)
            if started is not None:
                found.setdefault(pid, started)
        return len(found) >= EXPECTED_CHILDREN

    wait_until(all_started, timeout, f"{EXPECTED_CHILDREN} demo processes", step=0.1)
    return found


def output(demo: MeshProcess) -> str:
    return demo.stdout_path.read_text(errors="replace")


def assert_clean_finish(demo: MeshProcess, started: dict[int, int]) -> None:
    text = output(demo)
    assert demo.proc.returncode == 0, f"{text}\n{demo.logs()}"
    assert "== summary" in text, text
    summary = re.search(r"requests sent (\d+), ok (\d+), errors (.+)", text)
    assert summary is not None, text
    sent, ok = int(summary[1]), int(summary[2])
    # The request in flight when the load stops is counted as sent, not as answered.
    assert ok > 0, text
    assert sent - 1 <= ok <= sent, text
    assert summary[3] == "none", text
    # Every service was reached through the gateway, and none answered an error.
    for name in members():
        row = re.search(rf"^  {name}\s+(\d+)\s+(\d+)  ", text, re.MULTILINE)
        assert row is not None and int(row[1]) > 0 and int(row[2]) == 0, text
    assert text.rstrip().endswith("all demo processes stopped"), text
    left = [pid for pid, start in started.items() if still_running(pid, start)]
    assert left == [], f"demo processes still running after exit: {left}"


def admin_ports(text: str) -> list[int]:
    return [int(port) for port in re.findall(r"admin :(\d+)", text)]


def test_demo_with_duration_reports_and_stops_everything(
    tmp_path: Path, procs: list[MeshProcess]
) -> None:
    # Span files go to <TMPDIR>/mesh-spans when no collector is configured.
    demo = MeshProcess(
        ["demo", "--duration", "6", "--rps", "10"], tmp_path, name="demo",
        env={"TMPDIR": str(tmp_path)},
    )  # fmt: skip
    procs.append(demo)
    started = record_children(demo)
    assert len(started) == EXPECTED_CHILDREN, started
    wait_until(lambda: "load:" in output(demo), 20, "the demo's first load line", step=0.1)
    # While it runs, every sidecar and the gateway serve their metrics.
    ports = admin_ports(output(demo))
    assert len(ports) == len(members()), output(demo)
    for port in ports:
        status, _, body = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b"mesh_requests_total{" in body, port
    demo.proc.wait(30)
    spans = read_spans(span_files(tmp_path / "mesh-spans"))
    assert {span["service"] for span in spans} >= set(members()), "a service made no span"
    # Traces join up across services: some trace crosses the whole order path.
    crossing: dict[str, set[str]] = {}
    for span in spans:
        crossing.setdefault(span["trace_id"], set()).add(span["service"])
    assert max(len(services) for services in crossing.values()) >= 4, crossing
    text = output(demo)
    for name in members():
        assert re.search(rf"started {name}\s", text), text
        assert re.search(rf"ready\s+{name}\b", text), text
    assert re.search(r"load:\s+\d+ req/s", text), text
    assert_clean_finish(demo, started)


def test_demo_stops_cleanly_on_sigint(tmp_path: Path, procs: list[MeshProcess]) -> None:
    demo = MeshProcess(["demo", "--rps", "10"], tmp_path, name="demo-sigint")
    procs.append(demo)
    started = record_children(demo)
    wait_until(lambda: "load:" in output(demo), 20, "the demo's first load line", step=0.1)
    assert demo.proc.poll() is None
    demo.signal(signal.SIGINT)
    demo.proc.wait(30)
    assert_clean_finish(demo, started)


def test_demo_sigterm_during_start_up_leaves_no_process_behind(
    tmp_path: Path, procs: list[MeshProcess]
) -> None:
    demo = MeshProcess(["demo", "--rps", "10"], tmp_path, name="demo-early-term")
    procs.append(demo)
    # The gateway starts last, after every service.
    wait_until(lambda: f"started {ENTRY}" in output(demo), 20, "every process to start")
    started = {pid: t for pid in descendants(demo.proc.pid) if (t := start_time(pid))}
    demo.signal(signal.SIGTERM)
    assert "== sending" not in output(demo), "the load already runs: too late to test start-up"
    try:
        demo.proc.wait(30)
        # Children started after the snapshot belong to the processes in it.
        for pid in list(started):
            for child in descendants(pid):
                if (t := start_time(child)) is not None:
                    started.setdefault(child, t)
        wait_until(
            lambda: not any(still_running(p, t) for p, t in started.items()),
            2,
            "every demo process to stop",
        )
        assert "all demo processes stopped" in output(demo)
    finally:
        stop_leftovers(started)
