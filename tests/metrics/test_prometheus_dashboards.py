"""A real Prometheus scrapes real sidecars; every dashboard panel then shows data.

Three sidecars with mTLS. `client` calls `backend` (healthy, behind a bulkhead of two
slots, fault headers honoured), `flaky` (its app answers 503: the client retries each call
twice) and `broken` (nothing listens: after two connect failures its breaker opens and
later calls are refused), and it refuses an `intruder` calling it. After a bounded burst
of traffic, Prometheus (scraping every 500 ms, with the project's rule file loaded) must
agree with what the test sent and saw: request counts by status class on both sides of
each hop, retries against what the flaky app received, breaker refusals and ejections,
bulkhead rejections, injected faults and authorization denials. Then every panel query of
every dashboard under grafana/, with its template variables filled in the way Grafana
would, must return at least one series.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.metrics.dashboards import DASHBOARDS, RULE_FILES, load, queries, substitute, variables
from tests.metrics.prometheus import PrometheusServer, wait_scraped, wait_scraped_after
from tests.support.certs import Pki, client_context
from tests.support.processes import (
    MeshProcess,
    Sidecars,
    free_port,
    http_get,
    wait_until,
    write_yaml,
)
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply

pytestmark = pytest.mark.timeout(90)

HEALTHY_CALLS = 20
FLAKY_CALLS = 10
FLAKY_RETRIES = 2
BROKEN_CALLS = 6
BREAKER_TRIPS_AFTER = 2
SLOW_CALLS = 4  # concurrent, against a bulkhead of 2 slots and no queue
BULKHEAD_SLOTS = 2
INBOUND_CALLS = 3
#: What Grafana's $__rate_interval becomes: the whole test fits in it.
RATE_INTERVAL = "1m"

#: The client's per-upstream policies (`services:` in its config).
POLICIES: dict[str, Any] = {
    "backend": {
        "retry": {"max_retries": 0},
        "limits": {"max_requests": BULKHEAD_SLOTS, "max_pending": 0},
        "fault": {"honour_headers": True},
    },
    "flaky": {"retry": {"max_retries": FLAKY_RETRIES}, "outlier": {"enabled": False}},
    "broken": {
        "retry": {"max_retries": 0},
        # Open long enough that no probe happens while the test runs.
        "breaker": {
            "consecutive_failures": BREAKER_TRIPS_AFTER,
            "backoff_min": 120,
            "backoff_max": 240,
        },
    },
}


#: `/slow` requests hold their bulkhead slot until the test has seen the others refused.
RELEASE_SLOW = threading.Event()


def backend_reply(request: RecordedRequest) -> Reply:
    if request.target == "/slow":
        RELEASE_SLOW.wait(10)
    return Reply(body=b"ok\n")


@dataclass
class Mesh:
    client: MeshProcess
    backend: MeshProcess
    flaky: MeshProcess
    #: The client's upstream ports by service.
    client_ports: dict[str, int]
    flaky_app: RecordingUpstream
    backend_app: RecordingUpstream
    pki: Pki


@dataclass
class Sent:
    """What the test observed at the client side, to compare with the metrics."""

    flaky_statuses: list[tuple[int, str]]
    broken_statuses: list[tuple[int, str]]
    slow_statuses: list[tuple[int, str]]
    fault_status: tuple[int, str]
    intruder_status: int


def _get(
    port: int,
    path: str,
    context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-mesh-error") or ""
    finally:
        conn.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("mesh")
    pki = Pki(work / "pki")
    group = Sidecars(work)
    with (
        RecordingUpstream(backend_reply) as backend_app,
        RecordingUpstream(lambda r: Reply(status=503, body=b"down\n")) as flaky_app,
        RecordingUpstream() as client_app,
    ):
        listen = {name: free_port() for name in ("client", "backend", "flaky")}
        ports = {"backend": free_port(), "flaky": free_port(), "broken": free_port()}
        catalog = write_yaml(
            work / "catalog.yaml",
            {
                "services": {
                    "backend": [f"127.0.0.1:{listen['backend']}"],
                    "flaky": [f"127.0.0.1:{listen['flaky']}"],
                    "broken": [f"127.0.0.1:{free_port()}"],  # nothing listens there
                }
            },
        )

        def start(service: str, app: RecordingUpstream, **extra: Any) -> MeshProcess:
            leaf = pki.issue(service)
            config = {
                "service": service,
                "listen": f"127.0.0.1:{listen[service]}",
                "app_port": app.port,
                "catalog": str(catalog),
                "tls": {"cert": str(leaf.cert), "key": str(leaf.key), "roots": str(leaf.roots)},
                **extra,
            }
            path = write_yaml(work / f"{service}.yaml", config)
            return group.start("--config", str(path), name=service, wait_ready=False)

        backend = start("backend", backend_app)
        flaky = start("flaky", flaky_app)
        client = start(
            "client",
            client_app,
            authorization={"deny": ["intruder"]},
            upstreams=[{"name": name, "local_port": port} for name, port in ports.items()],
            services=POLICIES,
        )
        try:
            for proc in (backend, flaky, client):
                proc.wait_ready()
            yield Mesh(client, backend, flaky, ports, flaky_app, backend_app, pki)
        finally:
            group.stop_all()


@pytest.fixture(scope="module")
def sent(mesh: Mesh, prometheus: PrometheusServer) -> Sent:
    """The traffic, sent while Prometheus watches (so rates see it), then scraped once more."""
    for _ in range(HEALTHY_CALLS):
        assert _get(mesh.client_ports["backend"], "/") == (200, "")
    flaky = [_get(mesh.client_ports["flaky"], "/") for _ in range(FLAKY_CALLS)]
    broken = [_get(mesh.client_ports["broken"], "/") for _ in range(BROKEN_CALLS)]
    with concurrent.futures.ThreadPoolExecutor(SLOW_CALLS) as pool:
        calls = [
            pool.submit(_get, mesh.client_ports["backend"], "/slow") for _ in range(SLOW_CALLS)
        ]
        # Two take the slots and wait upstream; the others are refused at once.
        concurrent.futures.wait(calls, timeout=10, return_when=concurrent.futures.FIRST_COMPLETED)
        wait_until(
            lambda: sum(c.done() for c in calls) == SLOW_CALLS - BULKHEAD_SLOTS,
            10,
            "the calls beyond the bulkhead to be refused",
        )
        RELEASE_SLOW.set()
        slow = [call.result(10) for call in calls]
    fault = _get(mesh.client_ports["backend"], "/", headers={"x-mesh-fault-abort": "503"})
    client_listen = mesh.client.admin("/listeners")["inbound"]["address"].rsplit(":", 1)[1]
    web = client_context(mesh.pki.issue("web"))
    for _ in range(INBOUND_CALLS):
        assert _get(int(client_listen), "/", web) == (200, "")
    intruder, _ = _get(int(client_listen), "/", client_context(mesh.pki.issue("intruder")))
    assert _handshake_fails(int(client_listen), mesh.pki.issue("web").roots)
    # Two scrapes after the traffic: a series born late in it has two samples for rate().
    wait_scraped_after(prometheus, time.time())
    wait_scraped_after(prometheus, time.time())
    return Sent(flaky, broken, slow, fault, intruder)


def _handshake_fails(port: int, roots: Path) -> bool:
    """A caller without a client certificate: the inbound listener refuses the handshake."""
    context = ssl.create_default_context(cafile=str(roots))
    context.check_hostname = False
    try:
        _get(port, "/", context)
    except (ssl.SSLError, OSError):
        return True
    return False


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str, mesh: Mesh, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    targets = [f"127.0.0.1:{proc.admin_port}" for proc in (mesh.client, mesh.backend, mesh.flaky)]
    server = PrometheusServer(
        prometheus_binary, tmp_path_factory.mktemp("prometheus"), {"mesh": targets}, RULE_FILES
    )
    try:
        server.wait_ready()
        wait_scraped(server, len(targets))
        yield server
    finally:
        server.stop()


def test_the_test_saw_failures_and_refusals(sent: Sent) -> None:
    """The traffic really exercised the failing paths the dashboards show."""
    assert sent.flaky_statuses == [(503, "")] * FLAKY_CALLS  # the app's own 503s
    assert sent.broken_statuses == [(503, "upstream-connect-failed")] * BREAKER_TRIPS_AFTER + [
        (503, "circuit-open")
    ] * (BROKEN_CALLS - BREAKER_TRIPS_AFTER)
    assert sent.fault_status == (503, "fault-injected")
    statuses = sorted(sent.slow_statuses)
    assert statuses == [(200, "")] * BULKHEAD_SLOTS + [(503, "bulkhead-full")] * (
        SLOW_CALLS - BULKHEAD_SLOTS
    )
    assert sent.intruder_status == 403


def _sum(server: PrometheusServer, selector: str) -> float | None:
    return server.value(f"sum({selector})")


def test_request_counts_agree_with_what_was_sent(prometheus: PrometheusServer, sent: Sent) -> None:
    out = 'service="client",direction="outbound"'
    admitted = HEALTHY_CALLS + BULKHEAD_SLOTS
    refused = SLOW_CALLS - BULKHEAD_SLOTS + 1  # bulkhead rejections and the injected fault
    expected = {
        ("backend", "2xx"): admitted,
        ("backend", "5xx"): refused,
        ("flaky", "5xx"): FLAKY_CALLS,
        ("broken", "5xx"): BROKEN_CALLS,
    }
    for (upstream, cls), count in expected.items():
        prometheus.wait_value(
            f'sum(mesh_requests_total{{{out},upstream="{upstream}",status_class="{cls}"}})', count
        )
    prometheus.wait_value(
        f"sum(mesh_request_duration_seconds_count{{{out}}})",
        HEALTHY_CALLS + SLOW_CALLS + 1 + FLAKY_CALLS + BROKEN_CALLS,
    )
    # The other side of the hop counted the same requests.
    prometheus.wait_value(
        'sum(mesh_requests_total{service="backend",direction="inbound",status_class="2xx"})',
        admitted,
    )
    # Inbound at the client: the allowed callers, and the one denial.
    inbound = 'service="client",direction="inbound"'
    prometheus.wait_value(
        f'sum(mesh_requests_total{{{inbound},status_class="2xx"}})', INBOUND_CALLS
    )
    prometheus.wait_value(f'sum(mesh_requests_total{{{inbound},status_class="4xx"}})', 1)
    prometheus.wait_value('sum(mesh_authorization_denials_total{service="client"})', 1)
    # Four callers completed their handshake; the one without a certificate did not.
    handshakes = 'mesh_tls_inbound_handshakes_{}_total{{service="client"}}'
    prometheus.wait_value(f"sum({handshakes.format('started')})", INBOUND_CALLS + 2)
    prometheus.wait_value(f"sum({handshakes.format('completed')})", INBOUND_CALLS + 1)
    prometheus.wait_value(f'sum(mesh_local_responses_total{{{inbound},reason="forbidden"}})', 1)


def test_retries_agree_with_what_the_failing_app_received(
    prometheus: PrometheusServer, sent: Sent, mesh: Mesh
) -> None:
    attempts = len(mesh.flaky_app.requests)
    assert attempts == FLAKY_CALLS * (1 + FLAKY_RETRIES)
    flaky = 'service="client",upstream="flaky"'
    prometheus.wait_value(f"sum(mesh_retry_requests_total{{{flaky}}})", FLAKY_CALLS)
    prometheus.wait_value(f"sum(mesh_retries_total{{{flaky}}})", FLAKY_CALLS * FLAKY_RETRIES)
    prometheus.wait_value(f"sum(mesh_endpoint_requests_total{{{flaky}}})", attempts)
    prometheus.wait_value(f"sum(mesh_retries_skipped_total{{{flaky}}})", FLAKY_CALLS)
    # The flaky sidecar received exactly what its app received.
    prometheus.wait_value(
        'sum(mesh_requests_total{service="flaky",direction="inbound",status_class="5xx"})',
        attempts,
    )


def test_breakers_bulkheads_and_faults_agree_with_what_happened(
    prometheus: PrometheusServer, sent: Sent
) -> None:
    broken = 'service="client",upstream="broken"'
    tripped = BROKEN_CALLS - BREAKER_TRIPS_AFTER
    prometheus.wait_value(
        f'sum(mesh_local_responses_total{{{broken},reason="upstream-connect-failed"}})',
        BREAKER_TRIPS_AFTER,
    )
    prometheus.wait_value(f"sum(mesh_upstream_connect_failures_total{{{broken}}})", 2)
    prometheus.wait_value(
        f'sum(mesh_local_responses_total{{{broken},reason="circuit-open"}})', tripped
    )
    prometheus.wait_value(f'sum(mesh_breaker_state{{{broken},state="open"}})', 1)
    prometheus.wait_value(f'sum(mesh_breaker_state{{{broken},state="closed"}})', 0)
    prometheus.wait_value(f"sum(mesh_outlier_ejections_total{{{broken}}})", 1)
    prometheus.wait_value(f"sum(mesh_outlier_ejected_endpoints{{{broken}}})", 1)

    backend = 'service="client",upstream="backend"'
    rejected = SLOW_CALLS - BULKHEAD_SLOTS
    prometheus.wait_value(f"sum(mesh_bulkhead_rejected_total{{{backend}}})", rejected)
    prometheus.wait_value(
        f'sum(mesh_local_responses_total{{{backend},reason="bulkhead-full"}})', rejected
    )
    prometheus.wait_value(f"sum(mesh_bulkhead_limit{{{backend}}})", BULKHEAD_SLOTS)
    prometheus.wait_value(f'sum(mesh_fault_injections_total{{{backend},kind="abort"}})', 1)
    prometheus.wait_value(
        f'sum(mesh_local_responses_total{{{backend},reason="fault-injected"}})', 1
    )


def test_every_dashboard_panel_returns_data(prometheus: PrometheusServer, sent: Sent) -> None:
    empty = []
    checked = 0
    for path in DASHBOARDS:
        values = _variable_values(prometheus, load(path))
        for query in queries(path):
            expr = substitute(query.expr, values, RATE_INTERVAL)
            checked += 1
            if not prometheus.query(expr):
                empty.append(f"{query.dashboard} / {query.panel} / {query.ref}: {expr}")
    assert checked >= 40
    assert not empty, "panels without data:\n" + "\n".join(empty)
    # Prometheus watched the traffic happen: the rates are not just present but positive.
    busiest = prometheus.query(
        f'sum by (upstream) (rate(mesh_requests_total{{service="client"}}[{RATE_INTERVAL}]))'
    )
    assert all(float(series["value"][1]) > 0 for series in busiest), busiest


def _variable_values(prometheus: PrometheusServer, dashboard: dict[str, Any]) -> dict[str, str]:
    """Each variable as Grafana would fill it: `service` is the client (the sidecar with
    upstreams, mTLS and resilience); a multi-value variable is "All" of what its query lists."""
    values: dict[str, str] = {}
    for variable in variables(dashboard):
        found = _label_values(prometheus, substitute(variable["definition"], values, "1m"))
        assert found, f"variable {variable['name']} lists nothing"
        if variable["name"] == "service":
            assert "client" in found
            values["service"] = "client"
        else:
            values[variable["name"]] = "|".join(sorted(found)) if variable["multi"] else found[0]
    return values


def _label_values(prometheus: PrometheusServer, definition: str) -> list[str]:
    """label_values(selector, label) through the HTTP API, as Grafana's data source does."""
    inner = definition.removeprefix("label_values(").removesuffix(")")
    selector, _, label = inner.rpartition(",")
    data = prometheus.api(f"label/{label.strip()}/values", **{"match[]": selector.strip()})
    return sorted(data)


def test_rules_load_and_evaluate(prometheus: PrometheusServer) -> None:
    groups = prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 8
    assert all(rule["health"] in ("ok", "unknown") for rule in rules), rules
    wait_until(
        lambda: bool(prometheus.query('mesh:requests:rate1m{service="client"}')),
        10,
        "the recording rule to produce series",
        step=0.2,
    )


def test_targets_answer_with_the_metrics_content_type(mesh: Mesh) -> None:
    status, headers, body = http_get(f"http://127.0.0.1:{mesh.client.admin_port}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b"mesh_certificate_expiry_seconds{" in body
