"""A demo service: answers GET with JSON and calls its upstreams through its sidecar.

It knows nothing about the mesh: it calls `http://<service>/...` and the HTTP_PROXY its
sidecar set routes the call. It forwards the trace and request-id headers it received,
which is all an app must do for traces to join up across hops. Its answer nests its
upstreams' answers, so the caller sees the whole call tree with each hop's status and time.

Environment: DEMO_SERVICE (name), DEMO_PORT, DEMO_CALLS (comma-separated services),
DEMO_ROUTES (`/prefix=service,...`: a request whose path starts with a prefix calls only
that service; the entry routes this way), DEMO_MODE_FILE (holds `ok`, `slow`, `failing` or `down`,
read on every request: the demo's fault switch), DEMO_MODE (the mode when there is no
file), DEMO_SLOW_MS, DEMO_FAILING_SHARE. GET /healthz answers without calling anyone.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SERVICE = os.environ.get("DEMO_SERVICE", "demo")
CALLS = [c for c in os.environ.get("DEMO_CALLS", "").split(",") if c]
ROUTES = [
    (prefix, target)
    for prefix, _, target in (
        r.partition("=") for r in os.environ.get("DEMO_ROUTES", "").split(",")
    )
    if prefix and target
]
SLOW_S = float(os.environ.get("DEMO_SLOW_MS", "400") or 0) / 1000
FAILING_SHARE = float(os.environ.get("DEMO_FAILING_SHARE", "0.5") or 0)
PROPAGATED = ("traceparent", "tracestate", "baggage", "b3", "x-b3-traceid", "x-b3-spanid",
              "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "x-request-id")  # fmt: skip
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler())  # honours HTTP_PROXY


class Mode:
    """The fault mode, from DEMO_MODE_FILE when set: read on every request (a few bytes; an
    mtime check could miss two writes within the file system's timestamp granularity)."""

    def __init__(self, path: str | None, default: str) -> None:
        self.path = Path(path) if path else None
        self.value = default

    def current(self) -> str:
        if self.path is not None:
            # No file (yet): keep the last mode.
            with contextlib.suppress(OSError):
                self.value = self.path.read_text().strip() or "ok"
        return self.value


MODE = Mode(os.environ.get("DEMO_MODE_FILE"), os.environ.get("DEMO_MODE", "ok"))


def upstreams_for(path: str) -> list[str]:
    for prefix, target in ROUTES:
        if path == prefix or path.startswith(prefix + "/"):
            return [target]
    return CALLS


def call(upstream: str, path: str, headers: dict[str, str]) -> tuple[dict[str, Any], bool]:
    """One upstream call: its part of the call tree, and whether it succeeded."""
    started = time.monotonic()
    node: dict[str, Any] = {"service": upstream}
    request = urllib.request.Request(f"http://{upstream}{path}", headers=headers)
    try:
        with OPENER.open(request, timeout=10) as resp:
            node["status"] = resp.status
            node["calls"] = json.loads(resp.read()).get("calls", [])
            ok = True
    except urllib.error.HTTPError as exc:
        node["status"] = exc.code
        if reason := exc.headers.get("x-mesh-error"):
            node["mesh_error"] = reason
        with contextlib.suppress(ValueError):
            node["calls"] = json.loads(exc.read()).get("calls", [])
        ok = False
    except (OSError, ValueError) as exc:
        node["error"] = str(exc)
        ok = False
    node["ms"] = round((time.monotonic() - started) * 1000, 1)
    return node, ok


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"service": SERVICE, "mode": MODE.current()})
            return
        mode = MODE.current()
        if mode == "slow":
            time.sleep(SLOW_S)
        if mode == "down" or (mode == "failing" and random.random() < FAILING_SHARE):
            self._send(503, {"service": SERVICE, "error": f"payments switch: {mode}"})
            return
        forwarded = {h: v for h in PROPAGATED if (v := self.headers.get(h))}
        calls: list[dict[str, Any]] = []
        status = 200
        for upstream in upstreams_for(self.path):
            node, ok = call(upstream, self.path, forwarded)
            calls.append(node)
            status = status if ok else 502
        self._send(status, {"service": SERVICE, "calls": calls})

    def _send(self, status: int, data: dict[str, Any]) -> None:
        body = json.dumps(data).encode() + b"\n"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the sidecar's access log is the record


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # the sidecar stops us with SIGTERM: exit 0
    port = int(os.environ["DEMO_PORT"])
    # Loopback only by default: nothing reaches the app around its sidecar. In a container
    # the sidecar shares the app's network namespace, so loopback is still enough.
    host = os.environ.get("DEMO_HOST", "127.0.0.1")
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
