"""A small HTTP/1.1 app run as its own process, so tests can SIGKILL and restart it.

    python -m tests.support.app_process --port P --log FILE --mode echo|chaos|forward|fail

Every request is logged (`RECV <method> <target>`) and flushed before it is answered, so the
log survives a kill -9 and tells exactly which requests reached an app. Modes:

- echo:    200, body `<target> <sha256 of the request body>`.
- chaos:   like echo, but a seeded share of requests is delayed, reset before the response
           head, cut off mid-body (logged `ABORT <target>`), or answered 503 by the app.
- forward: calls `--forward URL` + its own path with the mesh's hop and trace headers copied
           from its request (as apps in a mesh do), and answers with that status.
- fail:    503 with `x-app-error: failing`, always.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import random
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO
from urllib.parse import urlsplit

#: What an app forwards from its inbound request to its outbound calls.
PROPAGATED = (
    "x-mesh-attempt",
    "x-mesh-deadline-ms",
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
)


class App(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, port: int, log: IO[str], mode: str, forward: str, seed: int) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.log = log
        self.log_lock = threading.Lock()
        self.mode = mode
        self.forward = urlsplit(forward) if forward else None
        self.random = random.Random(seed)
        self.random_lock = threading.Lock()

    def note(self, line: str) -> None:
        with self.log_lock:
            self.log.write(line + "\n")
            self.log.flush()

    def roll(self) -> float:
        with self.random_lock:
            return self.random.random()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: App

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _handle(self) -> None:
        body = self._body()
        app = self.server
        app.note(f"RECV {self.command} {self.path}")
        digest = hashlib.sha256(body).hexdigest()
        answer = f"{self.path} {digest}".encode()
        if app.mode == "fail":
            self._answer(503, b"failing\n", (("x-app-error", "failing"),))
        elif app.mode == "forward":
            self._forward(body)
        elif app.mode == "chaos":
            roll = app.roll()
            if roll < 0.04:
                self._reset()
            elif roll < 0.07:
                app.note(f"ABORT {self.path}")
                self.send_response(200)
                self.send_header("content-length", str(len(answer) + 100))
                self.end_headers()
                self.wfile.write(answer[: len(answer) // 2])
                self.wfile.flush()
                self._reset()
            elif roll < 0.09:
                self._answer(503, b"chaos\n", (("x-app-error", "chaos"),))
            else:
                if roll < 0.14:
                    time.sleep(0.05 + roll)  # a slow answer, 0.14 s to 0.19 s
                self._answer(200, answer)
        else:
            self._answer(200, answer)

    def _forward(self, body: bytes) -> None:
        target = self.server.forward
        assert target is not None and target.hostname is not None
        headers = {n: v for n, v in self.headers.items() if n.lower() in PROPAGATED}
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        try:
            conn.request(self.command, target.path.rstrip("/") + self.path, body or None, headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        self._answer(response.status, data)

    do_GET = do_POST = do_PUT = do_DELETE = _handle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--mode", choices=["echo", "chaos", "forward", "fail"], default="echo")
    parser.add_argument("--forward", default="")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with open(args.log, "a") as log:
        app = App(args.port, log, args.mode, args.forward, args.seed)
        app.note("READY")
        app.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
