"""The sidecar's Prometheus metrics: every family is read from plain state at scrape time.

Nothing here runs per request. `SidecarCollector.collect` reads the request counters of the
observed stacks (mesh/metrics/requests.py), the cluster, pool, discovery and resilience
statistics `/clusters` shows, the listeners' connection counts, the certificate, the
authorization layer's denials and the event-loop lag probe, and turns them into metric
families. Names start with `mesh_`, values are in seconds and bytes, and labels stay few:
service, direction, upstream, status class or reason, and the endpoint where it matters
(breakers, per-endpoint load).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import mesh
from mesh.layers.authorize import Authorize
from mesh.metrics.histogram import Histogram
from mesh.metrics.loop_lag import LoopLag
from mesh.metrics.requests import RequestMetrics
from mesh.resilience.breaker import CLOSED, HALF_OPEN, OPEN
from mesh.stack import Handler

if TYPE_CHECKING:
    from mesh.http1.pool import EndpointPool
    from sidecar.runtime import Sidecar
    from sidecar.upstream_stack import UpstreamStack


CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
LOCAL_APP = "<local app>"
BREAKER_STATES = (CLOSED, OPEN, HALF_OPEN)


class SidecarMetrics:
    """One sidecar's counters that exist only for metrics, and its registry."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.requests = RequestMetrics(sidecar.config.service)
        self.loop_lag = LoopLag()
        self.reloads = {"applied": 0, "refused": 0}
        self._authorize: list[Authorize] = []
        self._observed: list[tuple[str, Handler]] = []
        #: Every server TLS context used so far (a rotation adds one): OpenSSL counts
        #: handshakes per context, and totals must not drop when the certificate rotates.
        self._server_contexts: list[ssl.SSLContext] = []
        #: Every upstream stack built, for reloads of their policies.
        self.upstreams: list[UpstreamStack] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SidecarCollector(self))
        # RSS, CPU seconds, open file descriptors: read from /proc at scrape time.
        ProcessCollector(namespace="mesh", registry=self.registry)

    def observe(self, handler: Handler, direction: str, upstream: str) -> Handler:
        """Wrap a stack so its requests are counted; remember layers that count denials."""
        current: object | None = handler
        while current is not None:
            if isinstance(current, Authorize):
                self._authorize.append(current)
            current = getattr(current, "inner", None)
        self._observed.append((direction, handler))
        return self.requests.observe(handler, direction, upstream)

    def observe_upstream(self, upstream: UpstreamStack, name: str) -> ObservedUpstream:
        """An upstream's stack with its head observed (the head itself never changes)."""
        self.upstreams.append(upstream)
        return ObservedUpstream(upstream, self.observe(upstream.handler, "outbound", name))

    def observed(self) -> list[tuple[str, Handler]]:
        """(direction, stack) of every observed stack, for reloads that reach into layers."""
        return list(self._observed)

    def inbound_handshakes(self) -> tuple[int, int] | None:
        """(started, completed) TLS handshakes on the inbound listener, None without mTLS."""
        tls = self.sidecar.tls
        if tls is None:
            return None
        current = tls.current.server
        if not any(ctx is current for ctx in self._server_contexts):
            self._server_contexts.append(current)
        started = completed = 0
        for ctx in (tls.listening_context, *self._server_contexts):
            stats = ctx.session_stats()
            started += stats["accept"]
            completed += stats["accept_good"]
        return started, completed

    def authorization_denials(self) -> int | None:
        if not self._authorize:
            return None
        return sum(layer.denied for layer in self._authorize)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ObservedUpstream:
    """`Services` holds this in place of the upstream stack: the same, with counted requests."""

    def __init__(self, upstream: UpstreamStack, handler: Handler) -> None:
        self.upstream = upstream
        self.handler = handler

    def adopt(self, pool: EndpointPool) -> EndpointPool:
        return self.upstream.adopt(pool)

    def refresh(self) -> None:
        self.upstream.refresh()

    def statistics(self) -> dict[str, Any]:
        return self.upstream.statistics()


class SidecarCollector(Collector):
    def __init__(self, metrics: SidecarMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        sidecar = metrics.sidecar
        service = sidecar.config.service
        yield from _requests(service, metrics.requests)
        if sidecar.services is not None:
            clusters = sidecar.clusters_snapshot()
            yield from _clusters(service, clusters)
            yield from _resilience(service, clusters)
            yield from _tls_failures(service, clusters, metrics)
        yield from _listeners(service, sidecar.listeners_snapshot())
        yield from _identity(service, sidecar, metrics.authorization_denials())
        yield from _process(service, metrics)


def _histogram(name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=labels, unit="")


def _add_histogram(family: HistogramMetricFamily, values: list[str], histogram: Histogram) -> None:
    family.add_metric(values, histogram.cumulative(), histogram.sum)


_RQ = ["service", "direction", "upstream"]


def _requests(service: str, requests: RequestMetrics) -> Iterator[Metric]:
    total = CounterMetricFamily(
        "mesh_requests",
        "Requests by the status class of their response (proxy-made answers included).",
        labels=[*_RQ, "status_class"],
    )
    duration = _histogram(
        "mesh_request_duration_seconds",
        "From the request head parsed to the response head ready.",
        _RQ,
    )
    in_flight = GaugeMetricFamily(
        "mesh_requests_in_flight", "Requests waiting for their response head.", labels=_RQ
    )
    local = CounterMetricFamily(
        "mesh_local_responses",
        "Answers the proxy made itself, by their x-mesh-error reason.",
        labels=[*_RQ, "reason"],
    )
    grpc = CounterMetricFamily(
        "mesh_grpc_responses",
        "gRPC calls by the status code their client saw (grpc-status).",
        labels=[*_RQ, "grpc_code"],
    )
    for (direction, upstream), stats in sorted(requests.stats.items()):
        values = [service, direction, upstream]
        for code, count in sorted(stats.grpc.items()):
            grpc.add_metric([*values, code], count)
        for cls, count in stats.classes():
            if count or cls != "other":
                total.add_metric([*values, cls], count)
        _add_histogram(duration, values, stats.duration)
        in_flight.add_metric(values, stats.in_flight)
        for reason, count in sorted(stats.local.items()):
            local.add_metric([*values, reason], count)
    yield from (total, duration, in_flight, local, grpc)


def _where(name: str, service: str) -> tuple[str, str]:
    """(direction, upstream) of a cluster: the local app is the inbound side's upstream."""
    return ("inbound", service) if name == LOCAL_APP else ("outbound", name)


def _clusters(service: str, clusters: dict[str, Any]) -> Iterator[Metric]:
    ep_labels = [*_RQ, "endpoint"]
    ep_requests = CounterMetricFamily(
        "mesh_endpoint_requests", "Attempts sent to each endpoint.", labels=ep_labels
    )
    ep_in_flight = GaugeMetricFamily(
        "mesh_endpoint_requests_in_flight", "Attempts in flight per endpoint.", labels=ep_labels
    )
    conns = GaugeMetricFamily(
        "mesh_upstream_connections",
        "Pooled connections to the upstream's endpoints, by state.",
        labels=[*_RQ, "state"],
    )
    opened = CounterMetricFamily(
        "mesh_upstream_connections_opened", "Connections opened to the upstream.", labels=_RQ
    )
    connect_failures = CounterMetricFamily(
        "mesh_upstream_connect_failures",
        "Connects refused, unreachable or timed out.",
        labels=_RQ,
    )
    endpoints = GaugeMetricFamily(
        "mesh_upstream_endpoints", "Usable endpoints discovery gave.", labels=_RQ
    )
    rejected = GaugeMetricFamily(
        "mesh_upstream_endpoints_rejected",
        "Endpoints discovery gave that were refused (port 0, this sidecar itself, ...).",
        labels=_RQ,
    )
    answered = GaugeMetricFamily(
        "mesh_discovery_answered", "1 once discovery has answered for the upstream.", labels=_RQ
    )
    age = GaugeMetricFamily(
        "mesh_discovery_update_age_seconds",
        "Seconds since the upstream's endpoints were last updated.",
        labels=_RQ,
    )
    stale = GaugeMetricFamily(
        "mesh_discovery_stale",
        "1 while discovery fails and the last good endpoints are in use.",
        labels=_RQ,
    )
    now = time.time()
    for name, data in clusters.items():
        values = [service, *_where(name, service)]
        states = {"idle": 0, "busy": 0, "connecting": 0}
        opened_total = failures_total = 0
        for ep in data["endpoints"]:
            ep_values = [*values, ep["address"]]
            ep_requests.add_metric(ep_values, ep["requests"])
            ep_in_flight.add_metric(ep_values, ep["in_flight"])
            pool = ep["pool"]
            for state in states:
                states[state] += pool[state]
            opened_total += pool["opened"]
            failures_total += pool["connect_failures"]
        for state, count in states.items():
            conns.add_metric([*values, state], count)
        opened.add_metric(values, opened_total)
        connect_failures.add_metric(values, failures_total)
        endpoints.add_metric(values, len(data["endpoints"]))
        rejected.add_metric(values, len(data["rejected"]))
        answered.add_metric(values, 1 if data["discovery_answered"] else 0)
        if data["updated_at"] is not None:
            age.add_metric(values, max(0.0, now - data["updated_at"]))
        stale.add_metric(values, 0 if data["stale_since"] is None else 1)
    yield from (ep_requests, ep_in_flight, conns, opened, connect_failures)
    yield from (endpoints, rejected, answered, age, stale)


def _resilience(service: str, clusters: dict[str, Any]) -> Iterator[Metric]:
    ep_labels = [*_RQ, "endpoint"]
    retry_requests = CounterMetricFamily(
        "mesh_retry_requests", "Requests that passed the retry layer.", labels=_RQ
    )
    retries = CounterMetricFamily("mesh_retries", "Retries attempted.", labels=_RQ)
    skipped = CounterMetricFamily(
        "mesh_retries_skipped",
        "Failed attempts not retried, by why (budget, limit, not retryable, ...).",
        labels=[*_RQ, "reason"],
    )
    budget_refused = CounterMetricFamily(
        "mesh_retry_budget_refused", "Retries the retry budget refused.", labels=_RQ
    )
    budget_available = GaugeMetricFamily(
        "mesh_retry_budget_available", "Retries the budget would allow now.", labels=_RQ
    )
    breaker = GaugeMetricFamily(
        "mesh_breaker_state",
        "1 for the endpoint breaker's current state, 0 for the others.",
        labels=[*ep_labels, "state"],
    )
    ejections = CounterMetricFamily(
        "mesh_outlier_ejections", "Times each endpoint was ejected.", labels=ep_labels
    )
    ejected = GaugeMetricFamily(
        "mesh_outlier_ejected_endpoints", "Endpoints ejected now.", labels=_RQ
    )
    refusals = CounterMetricFamily(
        "mesh_outlier_refusals",
        "Requests refused because every endpoint was ejected or open.",
        labels=_RQ,
    )
    bh_in_use = GaugeMetricFamily("mesh_bulkhead_in_use", "Slots in use.", labels=_RQ)
    bh_limit = GaugeMetricFamily("mesh_bulkhead_limit", "Concurrent slots allowed.", labels=_RQ)
    bh_queued = GaugeMetricFamily(
        "mesh_bulkhead_queued", "Requests waiting for a slot.", labels=_RQ
    )
    bh_admitted = CounterMetricFamily(
        "mesh_bulkhead_admitted", "Requests given a slot.", labels=_RQ
    )
    bh_rejected = CounterMetricFamily(
        "mesh_bulkhead_rejected", "Requests refused: no slot and no room to wait.", labels=_RQ
    )
    bh_timed_out = CounterMetricFamily(
        "mesh_bulkhead_timed_out", "Requests whose deadline passed waiting for a slot.", labels=_RQ
    )
    conn_limit = GaugeMetricFamily(
        "mesh_upstream_connection_limit", "Connections allowed to the upstream.", labels=_RQ
    )
    conn_overflows = CounterMetricFamily(
        "mesh_upstream_connections_overflowed",
        "Connections refused by the upstream's connection cap.",
        labels=_RQ,
    )
    faults = CounterMetricFamily(
        "mesh_fault_injections", "Faults injected on purpose, by kind.", labels=[*_RQ, "kind"]
    )
    for name, data in clusters.items():
        layers = data.get("resilience") or {}
        values = [service, *_where(name, service)]
        retry = layers.get("retry")
        if retry is not None:
            retry_requests.add_metric(values, retry["requests_total"])
            retries.add_metric(values, retry["retries_total"])
            for reason, count in sorted(retry["not_retried_total"].items()):
                skipped.add_metric([*values, reason], count)
            budget = retry["budget"]
            budget_refused.add_metric(values, budget["refused_total"])
            budget_available.add_metric(values, budget["available"])
        outlier = layers.get("outlier")
        if outlier is not None:
            ejected.add_metric(values, outlier["ejected"])
            refusals.add_metric(values, outlier["refusals_total"])
            for endpoint, state in sorted(outlier["endpoints"].items()):
                ep_values = [*values, endpoint]
                for name_of_state in BREAKER_STATES:
                    breaker.add_metric(
                        [*ep_values, name_of_state], 1 if state["state"] == name_of_state else 0
                    )
                ejections.add_metric(ep_values, state["ejections_total"])
        bulkhead = layers.get("bulkhead")
        if bulkhead is not None:
            bh_in_use.add_metric(values, bulkhead["in_use"])
            bh_limit.add_metric(values, bulkhead["max_concurrent"])
            bh_queued.add_metric(values, bulkhead["queued"])
            bh_admitted.add_metric(values, bulkhead["admitted_total"])
            bh_rejected.add_metric(values, bulkhead["rejected_total"])
            bh_timed_out.add_metric(values, bulkhead["timed_out_total"])
        connections = layers.get("connections")
        if connections is not None:
            conn_limit.add_metric(values, connections["limit"])
            conn_overflows.add_metric(values, connections["overflowed_total"])
        fault = layers.get("fault")
        if fault is not None:
            faults.add_metric([*values, "delay"], fault["delayed_total"])
            faults.add_metric([*values, "abort"], fault["aborted_total"])
    yield from (retry_requests, retries, skipped, budget_refused, budget_available)
    yield from (breaker, ejections, ejected, refusals)
    yield from (bh_in_use, bh_limit, bh_queued, bh_admitted, bh_rejected, bh_timed_out)
    yield from (conn_limit, conn_overflows, faults)


def _tls_failures(
    service: str, clusters: dict[str, Any], metrics: SidecarMetrics
) -> Iterator[Metric]:
    sidecar = metrics.sidecar
    if sidecar.tls is None:
        return
    family = CounterMetricFamily(
        "mesh_tls_handshake_failures",
        "TLS connections that failed, by direction and reason.",
        labels=["service", "direction", "reason"],
    )
    handshake = mismatch = 0
    for name, data in clusters.items():
        if name == LOCAL_APP:
            continue  # the app is plain HTTP on loopback
        for ep in data["endpoints"]:
            handshake += ep["pool"]["tls_failures"]
            mismatch += ep["pool"]["identity_mismatches"]
    family.add_metric([service, "outbound", "handshake"], handshake)
    family.add_metric([service, "outbound", "identity_mismatch"], mismatch)
    no_identity = sum(
        lst.tracker.refused_identity for lst in sidecar.listeners if lst.direction == "inbound"
    )
    family.add_metric([service, "inbound", "no_identity"], no_identity)
    yield family
    handshakes = metrics.inbound_handshakes()
    if handshakes is not None:
        # The reason of an inbound handshake failure (no client certificate, another CA)
        # never reaches the application; OpenSSL's per-context counters tell how many.
        started = CounterMetricFamily(
            "mesh_tls_inbound_handshakes_started",
            "TLS handshakes callers began with the inbound listener.",
            labels=["service"],
        )
        started.add_metric([service], handshakes[0])
        completed = CounterMetricFamily(
            "mesh_tls_inbound_handshakes_completed",
            "Of those, handshakes that completed (started minus completed: failed or running).",
            labels=["service"],
        )
        completed.add_metric([service], handshakes[1])
        yield from (started, completed)


def _listeners(service: str, listeners: dict[str, Any]) -> Iterator[Metric]:
    labels = ["service", "listener"]
    conns = GaugeMetricFamily(
        "mesh_listener_connections",
        "Open client connections per listener, by state.",
        labels=[*labels, "state"],
    )
    accepted = CounterMetricFamily(
        "mesh_listener_connections_accepted", "Connections accepted.", labels=labels
    )
    refused = CounterMetricFamily(
        "mesh_listener_connections_refused",
        "Connections closed at once, by reason.",
        labels=[*labels, "reason"],
    )
    draining = GaugeMetricFamily(
        "mesh_listener_draining", "1 while the listener drains.", labels=labels
    )
    for name, data in listeners.items():
        values = [service, name]
        conns.add_metric([*values, "active"], data["active"])
        conns.add_metric([*values, "idle"], data["idle"])
        accepted.add_metric(values, data["accepted"])
        refused.add_metric([*values, "over_limit"], data["refused_over_limit"])
        refused.add_metric([*values, "no_identity"], data["refused_no_identity"])
        draining.add_metric(values, 1 if data["draining"] else 0)
    yield from (conns, accepted, refused, draining)


def _identity(service: str, sidecar: Sidecar, denials: int | None) -> Iterator[Metric]:
    if denials is not None:
        family = CounterMetricFamily(
            "mesh_authorization_denials",
            "Inbound requests refused by the authorization policy.",
            labels=["service"],
        )
        family.add_metric([service], denials)
        yield family
    if sidecar.tls is None:
        return
    certs = sidecar.tls.statistics()
    expiry = GaugeMetricFamily(
        "mesh_certificate_expiry_seconds",
        "Seconds until this sidecar's certificate expires.",
        labels=["service", "identity"],
    )
    expiry.add_metric([service, certs["identity"]], certs["seconds_to_expiry"])
    reloads = CounterMetricFamily(
        "mesh_certificate_reloads", "Certificate rotations picked up.", labels=["service"]
    )
    reloads.add_metric([service], certs["reloads"])
    reload_error = GaugeMetricFamily(
        "mesh_certificate_reload_failing",
        "1 while new certificate files are refused (the old ones stay).",
        labels=["service"],
    )
    reload_error.add_metric([service], 1 if certs["last_error"] else 0)
    yield from (expiry, reloads, reload_error)


def _process(service: str, metrics: SidecarMetrics) -> Iterator[Metric]:
    lag = _histogram(
        "mesh_event_loop_lag_seconds", "How late the event loop runs a timer.", ["service"]
    )
    _add_histogram(lag, [service], metrics.loop_lag.histogram)
    info = GaugeMetricFamily(
        "mesh_sidecar_info",
        "Constant 1; labels describe the sidecar.",
        labels=["service", "data_path"],
    )
    info.add_metric([service, "compiled" if mesh.compiled() else "python"], 1)
    reloads = CounterMetricFamily(
        "mesh_config_reloads",
        "Config reloads (SIGHUP or POST /reload), by result.",
        labels=["service", "result"],
    )
    for result, count in sorted(metrics.reloads.items()):
        reloads.add_metric([service, result], count)
    yield from (lag, info, reloads)
