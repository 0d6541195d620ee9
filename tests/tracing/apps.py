"""Test applications that do what the README asks of apps: forward the trace headers.

`ChainApp` answers every request; when it has a next hop it first calls it (through its
sidecar's upstream port) with the trace headers it received, and answers with that call's
status. It records the headers of every request it got.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TRACE_HEADERS = (
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)


class ChainApp:
    def __init__(self, next_port: int | None = None) -> None:
        self.next_port = next_port
        self.received: list[dict[str, str]] = []
        self._lock = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                with app._lock:
                    app.received.append(headers)
                status, body = 200, b"ok\n"
                if app.next_port is not None:
                    forwarded = {k: v for k, v in headers.items() if k in TRACE_HEADERS}
                    conn = http.client.HTTPConnection("127.0.0.1", app.next_port, timeout=10)
                    try:
                        conn.request("GET", self.path, headers=forwarded)
                        reply = conn.getresponse()
                        status, body = reply.status, reply.read()
                    finally:
                        conn.close()
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
