"""The running-demo check against stand-ins for Jaeger's and Prometheus's HTTP APIs.

No Docker engine (so no Jaeger) runs here; the stand-ins answer with the shapes those APIs
document (Jaeger's /api/services and /api/traces, Prometheus's /api/v1/query) so that what
the check reads and what it reports is tested.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from sidecar.demo import check
from sidecar.demo.topology import LOAD_CLIENT, SERVICES

pytestmark = pytest.mark.timeout(20)

NAMES = [s.name for s in SERVICES]


class Backend:
    """What the stand-in answers: known services, trace processes, per-service values."""

    def __init__(self) -> None:
        self.services = list(NAMES)
        self.trace_services = list(NAMES)
        self.up = dict.fromkeys([*NAMES, LOAD_CLIENT], "1")
        self.rates = dict.fromkeys(NAMES, "2.5")
        self.queries: list[str] = []

    def answer(self, path: str, query: dict[str, list[str]]) -> Any:
        if path == "/api/services":
            return {"data": self.services}
        if path == "/api/traces":
            processes = {f"p{i}": {"serviceName": n} for i, n in enumerate(self.trace_services)}
            return {"data": [{"traceID": "1", "spans": [], "processes": processes}]}
        promql = query["query"][0]
        self.queries.append(promql)
        values = self.up if promql.startswith("up{") else self.rates
        result = [{"metric": {"service": k}, "value": [0, v]} for k, v in values.items()]
        return {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.fixture
def backend() -> Iterator[tuple[Backend, str]]:
    state = Backend()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            body = json.dumps(state.answer(url.path, parse_qs(url.query))).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        check.main(["--jaeger", url, "--prometheus", url, "--wait", "0"])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().out


def test_a_healthy_demo_passes(
    backend: tuple[Backend, str], capsys: pytest.CaptureFixture[str]
) -> None:
    state, url = backend
    code, out = run(url, capsys)
    assert code == 0, out
    assert out.startswith("ok: traces cross frontend, notifications, orders, payments, products")
    assert any('job="mesh-sidecars"' in q for q in state.queries)


def test_missing_spans_scrapes_and_traffic_are_named(
    backend: tuple[Backend, str], capsys: pytest.CaptureFixture[str]
) -> None:
    state, url = backend
    state.services.remove("notifications")
    state.trace_services.remove("payments")  # no trace crosses the whole order path
    state.up["users"] = "0"
    state.rates["orders"] = "0"
    code, out = run(url, capsys)
    assert code == 1
    assert "jaeger: no spans yet from notifications" in out
    assert "jaeger: none of 1 traces from frontend crosses" in out
    assert "prometheus: not scraped (up != 1): users" in out
    assert "prometheus: no request counters growing for orders" in out


def test_an_unreachable_backend_is_reported_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run("http://127.0.0.1:9", capsys)
    assert code == 1 and "jaeger: URLError" in out and "prometheus: URLError" in out
