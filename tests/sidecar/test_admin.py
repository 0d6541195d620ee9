"""The sidecar's admin API: readiness and liveness, cluster and listener state, errors.

`/ready` stays 503 (with a JSON reason) until the local app accepts connections, even when
the app starts after the sidecar; `/clusters` shows every upstream with its endpoints and
the identity each must prove; `/listeners` shows every listener's address and connection
counts; unknown paths are 404 and non-GET methods 405; the admin API binds to loopback.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.sidecar.helpers import IDENTITY
from tests.support.processes import MeshProcess, free_port, http_get, wait_until, write_yaml
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.timeout(30)


def request(port: int, method: str, path: str) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, headers, json.loads(body) if body else None
    finally:
        conn.close()


class _Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"hello from the app\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def late_app() -> Iterator[tuple[int, list[ThreadingHTTPServer]]]:
    """A port for an app that the test starts later; the app is stopped at the end."""
    started: list[ThreadingHTTPServer] = []
    yield free_port(), started
    for server in started:
        server.shutdown()
        server.server_close()


def start_app(port: int, started: list[ThreadingHTTPServer]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Hello)
    server.daemon_threads = True
    started.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def test_ready_waits_for_the_app_started_after_the_sidecar(
    tmp_path: Path,
    procs: list[MeshProcess],
    late_app: tuple[int, list[ThreadingHTTPServer]],
) -> None:
    app_port, apps = late_app
    listen = free_port()
    proc = MeshProcess.sidecar(
        tmp_path, "--service", "web", "--app-port", str(app_port),
        "--listen", f"127.0.0.1:{listen}", wait_ready=False,
    )  # fmt: skip
    procs.append(proc)
    assert proc.admin_port is not None

    def live() -> bool:
        try:
            return request(proc.admin_port, "GET", "/live")[0] == 200  # type: ignore[arg-type]
        except OSError:
            return False

    wait_until(live, 15, "the admin API to answer /live")
    status, headers, body = request(proc.admin_port, "GET", "/live")
    assert (status, body) == (200, {"live": True})

    # The app port is still closed: not ready, and the reason says what is missing.
    status, headers, body = request(proc.admin_port, "GET", "/ready")
    assert status == 503
    assert headers["content-type"] == "application/json"
    assert body == {
        "ready": False,
        "reason": f"waiting for the app on 127.0.0.1:{app_port}",
    }
    assert proc.proc.poll() is None

    start_app(app_port, apps)
    proc.wait_ready(timeout=10)
    status, _, body = request(proc.admin_port, "GET", "/ready")
    assert (status, body) == (200, {"ready": True, "reason": "ok"})
    # And traffic now reaches the app through the inbound listener.
    status, _, text = http_get(f"http://127.0.0.1:{listen}/")
    assert (status, text) == (200, b"hello from the app\n")
    assert proc.stop() == 0


@pytest.fixture
def sidecar_with_upstreams(
    tmp_path: Path, procs: list[MeshProcess]
) -> Iterator[tuple[MeshProcess, dict[str, int]]]:
    with RecordingUpstream() as app, RecordingUpstream() as b1, RecordingUpstream() as b2:
        ports = {
            "app": app.port,
            "listen": free_port(),
            "backend": free_port(),
            "payments": free_port(),
            "proxy": free_port(),
            "b1": b1.port,
            "b2": b2.port,
        }
        catalog = write_yaml(
            tmp_path / "catalog.yaml",
            {
                "services": {
                    "backend": [
                        f"127.0.0.1:{b1.port}",
                        {
                            "address": f"127.0.0.1:{b2.port}",
                            "identity": "spiffe://other.domain/ns/x/dc/dc2/svc/legacy",
                            "weight": 3,
                        },
                    ],
                    "payments": [],
                }
            },
        )
        proc = MeshProcess.sidecar(
            tmp_path, "--service", "web", "--app-port", str(app.port),
            "--listen", f"127.0.0.1:{ports['listen']}",
            "--upstream", f"backend={ports['backend']}",
            "--upstream", f"payments={ports['payments']}",
            "--proxy-port", str(ports["proxy"]),
            "--catalog", str(catalog), wait_ready=False,
        )  # fmt: skip
        procs.append(proc)
        proc.wait_ready()
        assert proc.admin_port is not None
        ports["admin"] = proc.admin_port
        yield proc, ports


def test_clusters_lists_upstreams_with_endpoints_and_identities(
    sidecar_with_upstreams: tuple[MeshProcess, dict[str, int]],
) -> None:
    _, ports = sidecar_with_upstreams
    # One call through the upstream port, so a request count shows up.
    status, _, _ = http_get(f"http://127.0.0.1:{ports['backend']}/x")
    assert status == 200
    status, headers, clusters = request(ports["admin"], "GET", "/clusters")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert set(clusters) == {"backend", "payments", "<local app>"}

    backend = clusters["backend"]
    assert backend["name"] == "backend"
    assert backend["discovery_answered"] is True
    assert backend["rejected"] == []
    endpoints = {e["address"]: e for e in backend["endpoints"]}
    assert set(endpoints) == {f"127.0.0.1:{ports['b1']}", f"127.0.0.1:{ports['b2']}"}
    first = endpoints[f"127.0.0.1:{ports['b1']}"]
    second = endpoints[f"127.0.0.1:{ports['b2']}"]
    assert first["identity"] == IDENTITY.format("backend")
    assert first["weight"] == 1
    assert second["identity"] == "spiffe://other.domain/ns/x/dc/dc2/svc/legacy"
    assert second["weight"] == 3
    assert first["requests"] + second["requests"] == 1
    assert first["in_flight"] == second["in_flight"] == 0

    assert clusters["payments"]["discovery_answered"] is True
    assert clusters["payments"]["endpoints"] == []
    local = clusters["<local app>"]["endpoints"]
    assert [e["address"] for e in local] == [f"127.0.0.1:{ports['app']}"]


def test_listeners_lists_every_listener(
    sidecar_with_upstreams: tuple[MeshProcess, dict[str, int]],
) -> None:
    proc, ports = sidecar_with_upstreams
    status, _, listeners = request(ports["admin"], "GET", "/listeners")
    assert status == 200
    addresses = {name: info["address"] for name, info in listeners.items()}
    assert addresses == {
        "inbound": f"127.0.0.1:{ports['listen']}",
        "upstream:backend": f"127.0.0.1:{ports['backend']}",
        "upstream:payments": f"127.0.0.1:{ports['payments']}",
        "proxy": f"127.0.0.1:{ports['proxy']}",
        "admin": f"127.0.0.1:{ports['admin']}",
    }
    for name, info in listeners.items():
        assert info["draining"] is False, name
        assert {"open", "active", "idle", "accepted", "refused_over_limit"} <= set(info)
    # This very request is the admin listener's one active connection.
    assert listeners["admin"]["active"] == 1
    assert listeners["inbound"]["open"] == 0

    # An idle keep-alive client on the inbound listener shows up as open and idle.
    conn = http.client.HTTPConnection("127.0.0.1", ports["listen"], timeout=5)
    try:
        conn.request("GET", "/")
        assert conn.getresponse().read()

        def idle_seen() -> bool:
            inbound = proc.admin("/listeners")["inbound"]
            return bool(inbound["open"] == 1 and inbound["idle"] == 1 and inbound["active"] == 0)

        wait_until(idle_seen, 5, "the idle inbound connection on /listeners")
    finally:
        conn.close()


def test_unknown_path_is_404_and_other_methods_405(
    sidecar_with_upstreams: tuple[MeshProcess, dict[str, int]],
) -> None:
    _, ports = sidecar_with_upstreams
    admin = ports["admin"]
    status, headers, body = request(admin, "GET", "/nope")
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert body["error"] == "not found"
    assert body["paths"] == [
        "/certs", "/clusters", "/config", "/drain", "/listeners", "/live", "/logging",
        "/metrics", "/ready", "/reload", "/tracing",
    ]  # fmt: skip
    for method in ("POST", "PUT", "DELETE"):
        status, _, body = request(admin, method, "/ready")
        assert (status, body) == (405, {"error": "method not allowed"}), method
    status, _, body = request(admin, "HEAD", "/live")
    assert status == 200
    assert body is None


def test_admin_binds_to_loopback_by_default(tmp_path: Path, procs: list[MeshProcess]) -> None:
    with socket.socket() as probe:
        # As the sidecar binds: a connection of an earlier run in TIME_WAIT is no obstacle.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 15000))
        except OSError:
            pytest.skip("port 15000 (the default admin port) is in use on this machine")
    proc = MeshProcess(["sidecar", "--service", "web"], tmp_path)
    proc.admin_port = 15000
    procs.append(proc)
    proc.wait_ready()
    assert proc.admin("/config")["admin"] == "127.0.0.1:15000"
    assert proc.admin("/listeners")["admin"]["address"] == "127.0.0.1:15000"
    # The kernel's view of the process's listening sockets: the admin port on 127.0.0.1 only.
    listening = []
    for line in Path(f"/proc/{proc.proc.pid}/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if state == "0A" and int(port, 16) == 15000:
            listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1, little-endian hex
    assert proc.stop() == 0
