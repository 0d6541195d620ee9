"""The admin API's control side: metrics listener, log level, config reload, drain.

A separate metrics listener serves `/metrics` and nothing else. The log level switches at
runtime. SIGHUP and `POST /reload` re-read the config file: live keys apply at once while a
keep-alive connection carries on; an invalid value or a key that needs a restart is
refused with a log line naming it, and the running config stays. `POST /drain` stops the
sidecar the way SIGTERM does: the request in flight completes, the process exits 0.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import MeshProcess, free_port, http_get, wait_until, write_yaml
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply

pytestmark = pytest.mark.timeout(40)


def slow_on_request(request: RecordedRequest) -> Reply:
    """`/slow` answers after half a second, anything else at once."""
    return Reply(body=b"done\n", delay=0.5 if request.target == "/slow" else 0.0)


@pytest.fixture(scope="module")
def app() -> Iterator[RecordingUpstream]:
    with RecordingUpstream(slow_on_request) as upstream:
        yield upstream


class Running:
    """A sidecar started from a config file the test may rewrite."""

    def __init__(self, tmp_path: Path, procs: list[MeshProcess], app: RecordingUpstream):
        catalog = write_yaml(
            tmp_path / "catalog.yaml", {"services": {"backend": [f"127.0.0.1:{app.port}"]}}
        )
        self.upstream_port = free_port()
        self.metrics_port = free_port()
        self.config: dict[str, Any] = {
            "service": "web",
            "catalog": str(catalog),
            "upstreams": [{"name": "backend", "local_port": self.upstream_port}],
            "metrics": {"listen": f"0.0.0.0:{self.metrics_port}"},
            "drain_timeout": 10,
        }
        self.path = tmp_path / "sidecar.yaml"
        write_yaml(self.path, self.config)
        self.proc = MeshProcess.sidecar(tmp_path, "--config", str(self.path), wait_ready=False)
        procs.append(self.proc)
        self.proc.wait_ready()
        assert self.proc.admin_port is not None
        self.admin_port = self.proc.admin_port

    def rewrite(self, **changes: Any) -> None:
        write_yaml(self.path, {**self.config, **changes})

    def post(self, path: str) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            conn.request("POST", path)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def log_text(self) -> str:
        return self.proc.stderr_path.read_text(errors="replace")

    def metric(self, line_start: str) -> float:
        _, _, body = http_get(f"http://127.0.0.1:{self.admin_port}/metrics")
        for line in body.decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no {line_start} in /metrics")


@pytest.fixture
def sidecar(tmp_path: Path, procs: list[MeshProcess], app: RecordingUpstream) -> Running:
    return Running(tmp_path, procs, app)


def test_metrics_listener_serves_metrics_only(sidecar: Running) -> None:
    listeners = sidecar.proc.admin("/listeners")
    assert listeners["metrics"]["address"] == f"0.0.0.0:{sidecar.metrics_port}"
    status, headers, body = http_get(f"http://127.0.0.1:{sidecar.metrics_port}/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b"mesh_requests_total" in body or b"# TYPE mesh_requests_total" in body
    assert b"mesh_process_resident_memory_bytes" in body
    # Control and state stay on the admin listener.
    assert http_get(f"http://127.0.0.1:{sidecar.metrics_port}/clusters")[0] == 404
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.metrics_port, timeout=5)
    conn.request("POST", "/reload")
    assert conn.getresponse().status == 404
    conn.close()
    # The admin listener has /metrics too.
    assert http_get(f"http://127.0.0.1:{sidecar.admin_port}/metrics")[0] == 200


def test_log_level_switches_at_runtime(sidecar: Running) -> None:
    assert sidecar.proc.admin("/logging") == {"level": "info"}
    assert sidecar.post("/logging?level=debug") == (200, {"level": "debug", "previous": "info"})
    assert sidecar.proc.admin("/logging") == {"level": "debug"}
    status, body = sidecar.post("/logging?level=loud")
    assert status == 400 and "debug, info, warning, error" in body["error"]
    assert sidecar.proc.admin("/logging") == {"level": "debug"}
    assert "log level info -> debug" in sidecar.log_text()


def test_sighup_applies_live_changes_on_an_open_connection(sidecar: Running) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.upstream_port, timeout=5)
    conn.request("GET", "/slow")
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"done\n")
    socket_before = conn.sock

    sidecar.rewrite(outbound_timeouts={"request": 0.2}, log_level="debug")
    sidecar.proc.signal(signal.SIGHUP)
    wait_until(lambda: "config reloaded" in sidecar.log_text(), 5, "the reload's log line")
    line = next(x for x in sidecar.log_text().splitlines() if "config reloaded" in x)
    assert "log_level" in line and "outbound_timeouts.request" in line
    config = sidecar.proc.admin("/config")
    assert config["outbound_timeouts"]["request"] == 0.2
    assert config["log_level"] == "debug"

    # The same keep-alive connection now runs with the new deadline.
    conn.request("GET", "/slow")
    resp = conn.getresponse()
    assert resp.status == 504
    assert resp.getheader("x-mesh-error") == "upstream-timeout"
    resp.read()
    assert conn.sock is socket_before, "the connection was dropped by the reload"
    conn.close()
    assert sidecar.metric('mesh_config_reloads_total{result="applied"') == 1


def test_post_reload_rebuilds_an_upstream_policy_behind_open_connections(
    sidecar: Running,
) -> None:
    fault = {"x-mesh-fault-abort": "503"}
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.upstream_port, timeout=5)
    conn.request("GET", "/", headers=fault)
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"done\n")  # fault headers not honoured yet
    socket_before = conn.sock

    sidecar.rewrite(services={"backend": {"fault": {"honour_headers": True}}})
    status, body = sidecar.post("/reload")
    assert (status, body["changed"]) == (200, ["services.backend.fault.honour_headers"])
    policy = sidecar.proc.admin("/clusters")["backend"]["resilience"]["policy"]
    assert policy["fault"]["honour_headers"] is True

    conn.request("GET", "/", headers=fault)
    resp = conn.getresponse()
    resp.read()
    assert (resp.status, resp.getheader("x-mesh-error")) == (503, "fault-injected")
    assert conn.sock is socket_before, "the connection was dropped by the reload"
    conn.close()


def test_sighup_refuses_an_invalid_value_naming_the_key(sidecar: Running) -> None:
    sidecar.rewrite(limits={"max_headers": 3})
    sidecar.proc.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in sidecar.log_text(), 5, "the refusal's log line")
    line = next(x for x in sidecar.log_text().splitlines() if "reload refused" in x)
    assert "limits.max_headers" in line
    assert sidecar.proc.admin("/config")["limits"]["max_headers"] == 100
    assert sidecar.metric('mesh_config_reloads_total{result="refused"') == 1
    # Still serving.
    assert http_get(f"http://127.0.0.1:{sidecar.upstream_port}/")[0] == 200


def test_post_reload_refuses_a_change_that_needs_a_restart(sidecar: Running) -> None:
    sidecar.rewrite(
        upstreams=[{"name": "backend", "local_port": free_port()}],
        drain_timeout=3,
    )
    status, body = sidecar.post("/reload")
    assert status == 400
    assert body["reloaded"] is False
    assert "upstreams: changes only with a restart" in body["error"]
    assert sidecar.proc.admin("/config")["drain_timeout"] == 10  # all or nothing
    assert http_get(f"http://127.0.0.1:{sidecar.upstream_port}/")[0] == 200

    sidecar.rewrite(drain_timeout=3)
    assert sidecar.post("/reload") == (200, {"reloaded": True, "changed": ["drain_timeout"]})
    assert sidecar.proc.admin("/config")["drain_timeout"] == 3


def test_post_drain_finishes_in_flight_requests_and_exits(sidecar: Running) -> None:
    answers: list[int] = []

    def slow_call() -> None:
        answers.append(http_get(f"http://127.0.0.1:{sidecar.upstream_port}/slow")[0])

    caller = threading.Thread(target=slow_call)
    caller.start()
    wait_until(
        lambda: sidecar.proc.admin("/clusters")["backend"]["endpoints"][0]["in_flight"] == 1,
        5,
        "the slow request in flight",
    )
    assert sidecar.post("/drain") == (202, {"draining": True})
    caller.join(10)
    assert answers == [200]
    assert sidecar.proc.proc.wait(10) == 0
