"""A scripted stand-in for a Consul agent's HTTP API, for the faults a real agent cannot show.

It answers what a sidecar asks - CA roots, agent self, catalog services, registration writes,
and `/v1/health/connect/<service>` as a real blocking query - and, while `mode` says so,
misbehaves on the health query (RELIABILITY.md section F):

    ok           the current entries; held while `index` is current (up to `wait`, max 5s)
    error        500
    garbage      200 with a body that is not JSON
    wrong_types  200 with JSON of the wrong shape (`wrong_body`)
    huge         200 with 10 MB of JSON and no Content-Length (read until close)
    hang         accepts, reads the request, never answers (until mode changes or stop)
    reset        closes the connection without answering
    instant      the current entries at once, whatever the index (a server ignoring blocking)
    backwards    the current entries at once, under index `backwards_index`

`refuse()` closes the listening socket (connections are refused) and `resume()` listens
again on the same port. Every request is recorded with its arrival time. Loopback only; every
wait in a handler is bounded; one thread per connection, each answer closes its connection.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"
MAX_HOLD = 5.0
HUGE_BYTES = 10 * 1000 * 1000


@dataclass
class Seen:
    at: float
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""


def entry(
    port: int,
    address: str = "127.0.0.1",
    node_address: str = "127.0.0.1",
    weight: int | None = None,
    service_id: str = "",
) -> dict[str, Any]:
    """One health/connect entry, shaped as Consul 1.8 sends it."""
    service: dict[str, Any] = {
        "Kind": "connect-proxy",
        "ID": service_id or f"sidecar-{port}",
        "Service": "svc-sidecar-proxy",
        "Address": address,
        "Port": port,
        "Weights": {"Passing": weight, "Warning": 1} if weight is not None else None,
    }
    return {
        "Node": {"Node": "node1", "Address": node_address, "Datacenter": "dc1"},
        "Service": service,
        "Checks": [],
    }


@dataclass
class _State:
    mode: str = "ok"
    index: int = 10
    entries: dict[str, list[Any]] = field(default_factory=dict)
    backwards_index: int = 3
    wrong_body: Any = field(default_factory=lambda: [{"Node": {}, "Service": {"Port": "80"}}])
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: dict[str, tuple[str, str]] = field(default_factory=dict)
    maintenance: set[str] = field(default_factory=set)


class FakeConsul:
    def __init__(self) -> None:
        self.state = _State()
        self.requests: list[Seen] = []
        self._changed = threading.Condition()
        self._closing = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.resume()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control ------------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        with self._changed:
            self.state.mode = mode
            self._changed.notify_all()

    def set_entries(self, service: str, entries: list[Any]) -> None:
        """New entries for *service*, under a new index (wakes blocked queries)."""
        with self._changed:
            self.state.entries[service] = entries
            self.state.index += 1
            self._changed.notify_all()

    def refuse(self) -> None:
        """Stop listening: new connections are refused, held ones are dropped."""
        server, self._server = self._server, None
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def resume(self) -> None:
        """Listen again (on the same port after `refuse()`)."""
        with self._changed:
            self._closing = False
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.refuse()

    def __enter__(self) -> FakeConsul:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- evidence -----------------------------------------------------------------------------
    def seen(self, method: str, path_prefix: str, since: float = 0.0) -> list[Seen]:
        return [
            r
            for r in list(self.requests)
            if r.method == method and r.path.startswith(path_prefix) and r.at >= since
        ]

    def health_queries(self, service: str, since: float = 0.0) -> list[Seen]:
        return self.seen("GET", f"/v1/health/connect/{service}", since)

    # -- answers ------------------------------------------------------------------------------
    def _hold(self, index: int | None, wait: float) -> bool:
        """Block like Consul while *index* is current; False when the server is closing."""
        deadline = time.monotonic() + min(wait, MAX_HOLD)
        with self._changed:
            while not self._closing and self.state.mode == "ok" and index == self.state.index:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return not self._closing

    def _hang(self) -> None:
        deadline = time.monotonic() + 30
        with self._changed:
            while not self._closing and self.state.mode == "hang":
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._changed.wait(left)


def _wait_seconds(text: str) -> float:
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    if text.endswith("s"):
        return float(text[:-1])
    if text.endswith("m"):
        return float(text[:-1]) * 60
    return MAX_HOLD


def _handler(fake: FakeConsul) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _record(self) -> tuple[str, dict[str, str], bytes]:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            seen = Seen(time.monotonic(), self.command, url.path, query, headers, body)
            fake.requests.append(seen)
            return url.path, query, body

        def _send(
            self, status: int, data: Any = None, index: int | None = None, raw: bytes | None = None
        ) -> None:
            body = raw if raw is not None else json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if index is not None:
                self.send_header("X-Consul-Index", str(index))
            self.send_header("Connection", "close")
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(body)
            self.close_connection = True

        def do_GET(self) -> None:
            path, query, _ = self._record()
            state = fake.state
            if path == "/v1/agent/self":
                self._send(200, {"Config": {"Datacenter": "dc1", "NodeName": "node1"}})
            elif path == "/v1/agent/connect/ca/roots":
                root = {"ID": "r1", "Active": True, "RootCert": "-"}
                roots = {"ActiveRootID": "r1", "TrustDomain": TRUST_DOMAIN, "Roots": [root]}
                self._send(200, roots, index=5)
            elif path == "/v1/catalog/services":
                index = int(query["index"]) if "index" in query else None
                if not fake._hold(index, _wait_seconds(query.get("wait", "5s"))):
                    self.close_connection = True
                    return
                names: dict[str, list[str]] = {"consul": []}
                for name in [*state.entries, *(d["Name"] for d in state.services.values())]:
                    names[name] = []
                self._send(200, names, index=state.index)
            elif path.startswith("/v1/health/connect/"):
                self._health(path.rsplit("/", 1)[1], query)
            else:
                self._send(404, raw=b"not found")

        def _health(self, service: str, query: dict[str, str]) -> None:
            state = fake.state
            mode = state.mode
            if mode == "ok":
                index = int(query["index"]) if "index" in query else None
                if not fake._hold(index, _wait_seconds(query.get("wait", "5s"))):
                    self.close_connection = True
                    return
                self._send(200, state.entries.get(service, []), index=state.index)
            elif mode == "instant":
                self._send(200, state.entries.get(service, []), index=state.index)
            elif mode == "backwards":
                self._send(200, state.entries.get(service, []), index=state.backwards_index)
            elif mode == "error":
                self._send(500, raw=b"rpc error: No cluster leader", index=state.index)
            elif mode == "garbage":
                self._send(200, raw=b'[{"Node": {"Addr', index=state.index + 1)
            elif mode == "wrong_types":
                self._send(200, state.wrong_body, index=state.index + 1)
            elif mode == "huge":
                self.send_response(200)
                self.send_header("X-Consul-Index", str(state.index + 1))
                self.send_header("Connection", "close")
                self.end_headers()
                chunk = b"[" + b'"x",' * 25_000
                with contextlib.suppress(OSError):
                    for _ in range(HUGE_BYTES // len(chunk) + 1):
                        self.wfile.write(chunk)
                self.close_connection = True
            elif mode == "hang":
                fake._hang()
                self.close_connection = True
            else:  # reset
                self.close_connection = True

        def do_PUT(self) -> None:
            path, query, body = self._record()
            state = fake.state
            if path == "/v1/agent/service/register":
                definition = json.loads(body)
                with fake._changed:
                    state.services[definition["ID"]] = definition
                    state.checks[f"service:{definition['ID']}"] = ("critical", "")
                    state.index += 1
                    fake._changed.notify_all()
                self._send(200, raw=b"")
            elif path.startswith("/v1/agent/check/update/"):
                check = path.rsplit("/", 1)[1]
                if check not in state.checks:
                    self._send(500, raw=f'CheckID "{check}" does not have associated TTL'.encode())
                    return
                update = json.loads(body)
                state.checks[check] = (update["Status"], update.get("Output", ""))
                self._send(200, raw=b"")
            elif path.startswith("/v1/agent/service/maintenance/"):
                service_id = path.rsplit("/", 1)[1]
                if service_id not in state.services:
                    self._send(404, raw=b"Unknown service")
                    return
                if query.get("enable", "").lower() == "true":
                    state.maintenance.add(service_id)
                self._send(200, raw=b"")
            elif path.startswith("/v1/agent/service/deregister/"):
                service_id = path.rsplit("/", 1)[1]
                with fake._changed:
                    state.services.pop(service_id, None)
                    state.checks.pop(f"service:{service_id}", None)
                    state.index += 1
                    fake._changed.notify_all()
                self._send(200, raw=b"")
            else:
                self._send(404, raw=b"not found")

    return Handler


@contextlib.contextmanager
def fake_consul() -> Iterator[FakeConsul]:
    with FakeConsul() as fake:
        yield fake
