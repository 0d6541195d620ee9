"""`mesh attach`: an unmodified app run behind its own sidecar, in the order a mesh needs.

Start-up: the app's environment points HTTP_PROXY at the sidecar, and the sidecar is ready
before the app runs, so the app's very first outbound call (with curl and with urllib) to a
mesh service reaches it; a host outside the mesh passes through to its real address.
Shutdown on SIGTERM: inbound stops accepting and finishes its in-flight request first; only
then does the app get SIGTERM; the app's own outbound calls during its shutdown still work;
`mesh attach` exits with the app's exit code.
"""

from __future__ import annotations

import http.client
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.sidecar.helpers import (
    descendants,
    refuses,
    start_time,
    still_running,
    stop_leftovers,
)
from tests.support.processes import MeshProcess, free_port, wait_until, write_yaml
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.timeout(40)

SLOW = 1.5

#: The app under test. It knows nothing about the mesh; it writes what happens to a log
#: (one JSON line per event, with CLOCK_MONOTONIC times comparable to the test's).
APP = r"""
import json, os, signal, subprocess, sys, time, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG, PORT, OUTSIDE, SLOW = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])


def log(event, **data):
    with open(LOG, "a") as f:
        f.write(json.dumps({"event": event, "t": time.monotonic(), **data}) + "\n")


def curl(url, env=None):
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}", url],
        capture_output=True, text=True, env=env, timeout=10,
    )
    body, _, code = done.stdout.rpartition("\n")
    return {"code": int(code or 0), "body": body, "stderr": done.stderr}


def fetch(url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler())
    try:
        with opener.open(url, timeout=5) as resp:
            return {"code": resp.status, "body": resp.read().decode()}
    except Exception as exc:
        return {"code": 0, "error": repr(exc)}


log("start", http_proxy=os.environ.get("HTTP_PROXY"), lower=os.environ.get("http_proxy"),
    no_proxy=os.environ.get("NO_PROXY"))
# The very first calls, one attempt each: the sidecar must already route them.
log("mesh-curl", **curl("http://backend/first-curl"))
log("mesh-urllib", **fetch("http://backend/first-urllib"))
# NO_PROXY keeps loopback names direct; without it, a non-mesh host goes through the
# sidecar's proxy listener and passes through to its real address.
direct_env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
log("pass-curl", **curl(f"http://localhost:{OUTSIDE}/pass-curl", env=direct_env))
os.environ.pop("NO_PROXY"); os.environ.pop("no_proxy")
log("pass-urllib", **fetch(f"http://localhost:{OUTSIDE}/pass-urllib"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        log("request", path=self.path)
        if self.path == "/slow":
            time.sleep(SLOW)
        body = f"app answered {self.path}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        log("response-sent", path=self.path)

    def log_message(self, *args):
        pass


def on_sigterm(signum, frame):
    log("sigterm")
    log("shutdown-call", **fetch("http://backend/shutdown"))
    sys.exit(3)


signal.signal(signal.SIGTERM, on_sigterm)
server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True
log("serving")
try:
    server.serve_forever()
finally:
    server.server_close()
"""


def events(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]


def event(log: Path, name: str) -> dict[str, Any]:
    found = [e for e in events(log) if e["event"] == name]
    assert len(found) == 1, f"{name}: {found} in {events(log)}"
    return found[0]


def seen(log: Path, name: str) -> bool:
    return any(e["event"] == name for e in events(log))


def test_attach_starts_app_after_sidecar_and_stops_it_after_inbound_drains(
    tmp_path: Path, procs: list[MeshProcess]
) -> None:
    with RecordingUpstream() as backend, RecordingUpstream() as outside:
        catalog = write_yaml(
            tmp_path / "catalog.yaml", {"services": {"backend": [f"127.0.0.1:{backend.port}"]}}
        )
        app_script = tmp_path / "app.py"
        app_script.write_text(APP)
        app_log = tmp_path / "app.log"
        app_port, listen, admin = free_port(), free_port(), free_port()
        proc = MeshProcess(
            [
                "attach", "--service", "web", "--app-port", str(app_port),
                "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}",
                "--catalog", str(catalog), "--drain-timeout", "10",
                "--", sys.executable, str(app_script), str(app_log), str(app_port),
                str(outside.port), str(SLOW),
            ],
            tmp_path,
            name="attach",
        )  # fmt: skip
        procs.append(proc)
        wait_until(lambda: seen(app_log, "serving"), 15, "the app to start serving")
        proc.wait_ready(timeout=10)

        # -- start-up: the app found the proxy and its very first calls worked ----------------
        start = event(app_log, "start")
        assert start["http_proxy"] is not None
        assert start["http_proxy"].startswith("http://127.0.0.1:")
        assert start["lower"] == start["http_proxy"]
        proxy_port = int(start["http_proxy"].rsplit(":", 1)[1])
        assert proc.admin("/listeners")["proxy"]["address"] == f"127.0.0.1:{proxy_port}"
        assert "localhost" in start["no_proxy"].split(",")
        for name in ("mesh-curl", "mesh-urllib", "pass-curl", "pass-urllib"):
            result = event(app_log, name)
            assert result["code"] == 200, f"{name}: {result}"
        # The recording servers answer with the sha256 of the (empty) request body.
        empty_sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        for name in ("mesh-curl", "mesh-urllib", "pass-curl", "pass-urllib"):
            assert event(app_log, name)["body"].strip() == empty_sha, name

        # Each call arrived exactly once, through the sidecar (it adds X-Forwarded-For and
        # X-Request-Id), at the right server.
        assert [r.target for r in backend.requests] == ["/first-curl", "/first-urllib"]
        assert [r.target for r in outside.requests] == ["/pass-curl", "/pass-urllib"]
        for recorded in [*backend.requests, *outside.requests]:
            assert recorded.header("x-forwarded-for") == "127.0.0.1", recorded.headers
            assert recorded.header("x-request-id"), recorded.headers

        # -- shutdown: inbound drains before the app is told to stop --------------------------
        outcome: dict[str, Any] = {}

        def slow_call() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=15)
            try:
                conn.request("GET", "/slow")
                resp = conn.getresponse()
                outcome.update(
                    status=resp.status,
                    body=resp.read(),
                    connection=resp.getheader("connection"),
                    done_at=time.monotonic(),
                )
            except (OSError, http.client.HTTPException) as exc:
                outcome["error"] = exc
            finally:
                conn.close()

        client = threading.Thread(target=slow_call, daemon=True)
        client.start()
        wait_until(
            lambda: any(e.get("path") == "/slow" for e in events(app_log)),
            10,
            "the slow request to reach the app",
        )
        proc.signal(signal.SIGTERM)
        signalled = time.monotonic()

        # Inbound stops accepting at once, while the app is still running its request.
        wait_until(lambda: refuses(listen), 2, "the inbound listener to stop accepting")
        assert not seen(app_log, "sigterm"), "the app was signalled before inbound drained"

        code = proc.proc.wait(15)
        client.join(5)
        assert code == 3, proc.logs()

        assert outcome.get("error") is None, outcome
        assert outcome["status"] == 200
        assert outcome["body"] == b"app answered /slow\n"
        assert outcome["connection"] == "close"

        sigterm = event(app_log, "sigterm")
        sent = [e for e in events(app_log) if e["event"] == "response-sent"]
        assert [e["path"] for e in sent] == ["/slow"]
        assert signalled < sent[0]["t"] < sigterm["t"]
        assert sigterm["t"] - signalled >= SLOW / 2

        # The app's own call during its shutdown went through the still-serving outbound side.
        shutdown_call = event(app_log, "shutdown-call")
        assert shutdown_call["code"] == 200, shutdown_call
        assert [r.target for r in backend.requests][-1] == "/shutdown"
        assert refuses(proxy_port)
        assert refuses(admin)


def test_attach_exit_code_follows_the_app(tmp_path: Path, procs: list[MeshProcess]) -> None:
    admin = free_port()
    proc = MeshProcess(
        ["attach", "--service", "job", "--admin", f"127.0.0.1:{admin}",
         "--", sys.executable, "-c", "import sys; sys.exit(7)"],
        tmp_path,
        name="attach-exit",
    )  # fmt: skip
    procs.append(proc)
    assert proc.proc.wait(15) == 7, proc.logs()
    assert refuses(admin)


def test_attach_reports_a_command_that_cannot_start(
    tmp_path: Path, procs: list[MeshProcess]
) -> None:
    missing = str(tmp_path / "no-such-program")
    proc = MeshProcess(
        ["attach", "--service", "job", "--admin", f"127.0.0.1:{free_port()}", "--", missing],
        tmp_path,
        name="attach-missing",
    )
    procs.append(proc)
    assert proc.proc.wait(15) == 127
    assert f"cannot start {missing}" in proc.logs()


#: An app with one slow endpoint, so that inbound draining takes a while.
SLOW_APP = r"""
import signal, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        time.sleep(float(sys.argv[2]))
        self.send_response(200)
        self.send_header("content-length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.daemon_threads = True
server.serve_forever()
"""


def test_second_sigterm_while_draining_does_not_orphan_the_app(
    tmp_path: Path, procs: list[MeshProcess]
) -> None:
    app_script = tmp_path / "slow_app.py"
    app_script.write_text(SLOW_APP)
    app_port, listen, admin = free_port(), free_port(), free_port()
    proc = MeshProcess(
        [
            "attach", "--service", "web", "--app-port", str(app_port),
            "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}",
            "--drain-timeout", "10", "--", sys.executable, str(app_script), str(app_port), "3",
        ],
        tmp_path,
        name="attach-twice",
    )  # fmt: skip
    procs.append(proc)
    proc.wait_ready()
    app = {pid: t for pid in descendants(proc.proc.pid) if (t := start_time(pid))}
    assert len(app) == 1, app
    try:
        outcome: dict[str, Any] = {}

        def slow_call() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=15)
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                outcome.update(status=resp.status, body=resp.read())
            except (OSError, http.client.HTTPException) as exc:
                outcome["error"] = exc
            finally:
                conn.close()

        client = threading.Thread(target=slow_call, daemon=True)
        client.start()
        wait_until(
            lambda: proc.admin("/listeners")["inbound"]["active"] == 1,
            5,
            "the slow request to be in flight",
        )
        proc.signal(signal.SIGTERM)
        wait_until(lambda: refuses(listen), 2, "inbound to start draining")
        proc.signal(signal.SIGTERM)  # an impatient operator, or a second supervisor

        proc.proc.wait(15)
        wait_until(
            lambda: not any(still_running(p, t) for p, t in app.items()),
            2,
            "the app to be stopped with its sidecar",
        )
        assert refuses(app_port)
        client.join(5)
        assert proc.proc.returncode >= 0, "mesh attach was killed by the signal"
    finally:
        stop_leftovers(app)
