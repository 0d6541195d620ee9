"""The demo's app: it forwards trace headers, routes by path, and obeys the payments switch.

A real app process whose HTTP_PROXY points at a recording upstream (standing where its
sidecar's proxy port would be), so every call it makes is seen as the sidecar would see it.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import free_port, wait_until
from tests.support.upstream import RecordingUpstream, Reply

pytestmark = pytest.mark.timeout(30)

TRACE_HEADERS = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "vendor=opaque",
    "baggage": "customer=42",
    "b3": "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
    "x-b3-traceid": "4bf92f3577b34da6a3ce929d0e0e4736",
    "x-b3-spanid": "00f067aa0ba902b7",
    "x-b3-parentspanid": "a2fb4a1d1a96d312",
    "x-b3-sampled": "1",
    "x-request-id": "demo-request-1",
}


class App:
    def __init__(self, port: int, mode_file: Path, proxy: int) -> None:
        env = {
            "DEMO_SERVICE": "payments",
            "DEMO_PORT": str(port),
            "DEMO_CALLS": "users,notifications",
            "DEMO_ROUTES": "/users=users",
            "DEMO_MODE_FILE": str(mode_file),
            "DEMO_SLOW_MS": "300",
            "DEMO_FAILING_SHARE": "1",
            "HTTP_PROXY": f"http://127.0.0.1:{proxy}",
            "NO_PROXY": "localhost,127.0.0.1,::1",
            "PATH": "/usr/bin:/bin",
        }
        self.port = port
        self.mode_file = mode_file
        self.proc = subprocess.Popen([sys.executable, "-m", "sidecar.demo.app"], env=env)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def up(self) -> bool:
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[App, RecordingUpstream]]:
    with RecordingUpstream() as upstream:
        upstream.handler = lambda req: Reply(body=b'{"calls": []}')
        app = App(free_port(), tmp_path / "payments.mode", upstream.port)
        try:
            wait_until(app.up, 10, "the app to answer /healthz")
            yield app, upstream
        finally:
            app.proc.terminate()
            app.proc.wait(10)


def test_trace_headers_are_forwarded_on_every_call(app: tuple[App, RecordingUpstream]) -> None:
    demo, upstream = app
    status, body = demo.get("/", {**TRACE_HEADERS, "x-unrelated": "kept-home"})
    assert status == 200
    assert [c["service"] for c in body["calls"]] == ["users", "notifications"]
    assert [r.target for r in upstream.requests] == ["http://users/", "http://notifications/"]
    for request in upstream.requests:
        for name, value in TRACE_HEADERS.items():
            assert request.header(name) == value, name
        assert request.header("x-unrelated") is None


def test_a_route_calls_only_its_service(app: tuple[App, RecordingUpstream]) -> None:
    demo, upstream = app
    assert demo.get("/users/42")[0] == 200
    assert [r.target for r in upstream.requests] == ["http://users/users/42"]


def test_the_switch_makes_it_fail_then_down_then_slow_then_well_again(
    app: tuple[App, RecordingUpstream],
) -> None:
    demo, upstream = app
    demo.mode_file.write_text("failing\n")
    status, body = demo.get("/")
    assert status == 503 and "failing" in body["error"]
    assert upstream.requests == []  # it failed before calling anyone

    demo.mode_file.write_text("down\n")
    assert [demo.get("/")[0] for _ in range(3)] == [503, 503, 503]

    demo.mode_file.write_text("slow\n")
    started = time.monotonic()
    assert demo.get("/")[0] == 200
    assert time.monotonic() - started >= 0.3

    demo.mode_file.write_text("ok\n")
    started = time.monotonic()
    assert demo.get("/")[0] == 200
    assert time.monotonic() - started < 0.3
