"""A demo service: answers GET with JSON and calls its upstreams through its sidecar.

It knows nothing about the mesh: it calls `http://<service>/...` and the HTTP_PROXY its
sidecar set routes the call. It forwards the trace and request-id headers it received,
which is all an app must do for traces to join up across hops.

Environment: DEMO_SERVICE (name), DEMO_PORT, DEMO_CALLS (comma-separated services),
DEMO_FAIL_RATE (0..1, share of requests answered 503), DEMO_DELAY_MS.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SERVICE = os.environ.get("DEMO_SERVICE", "demo")
CALLS = [c for c in os.environ.get("DEMO_CALLS", "").split(",") if c]
PROPAGATED = ("traceparent", "tracestate", "baggage", "b3", "x-b3-traceid", "x-b3-spanid",
              "x-b3-parentspanid", "x-b3-sampled", "x-request-id")  # fmt: skip
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler())  # honours HTTP_PROXY


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        fail_rate = float(os.environ.get("DEMO_FAIL_RATE", "0") or 0)
        delay = float(os.environ.get("DEMO_DELAY_MS", "0") or 0) / 1000
        if delay:
            time.sleep(delay)
        if random.random() < fail_rate:
            self._send(503, {"service": SERVICE, "error": "injected failure"})
            return
        forwarded = {h: v for h in PROPAGATED if (v := self.headers.get(h))}
        calls: list[dict[str, Any]] = []
        status = 200
        for upstream in CALLS:
            request = urllib.request.Request(f"http://{upstream}/", headers=forwarded)
            try:
                with OPENER.open(request, timeout=10) as resp:
                    calls.append({"service": upstream, "status": resp.status})
            except urllib.error.HTTPError as exc:
                calls.append(
                    {
                        "service": upstream,
                        "status": exc.code,
                        "mesh_error": exc.headers.get("x-mesh-error"),
                    }
                )
                status = 502
            except OSError as exc:
                calls.append({"service": upstream, "error": str(exc)})
                status = 502
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
    # Loopback only: nothing reaches the app around its sidecar.
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
