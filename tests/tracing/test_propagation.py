"""Context in one format, out in another; broken or oversized context starts a new trace
and the request still succeeds. Spans go to the local span file (no collector), which
`mesh traces` shows as trees."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import MESH, Sidecars, wait_until
from tests.tracing.apps import ChainApp
from tests.tracing.conftest import traced_sidecar

pytestmark = pytest.mark.timeout(60)

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]")


@dataclass
class Hop:
    port: int
    app: ChainApp
    span_file: Path

    def call(self, headers: dict[str, str]) -> dict[str, str]:
        """Send a request with these headers; the headers the app received."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", f"/p/{uuid.uuid4().hex}", headers=headers)
            reply = conn.getresponse()
            reply.read()
            assert reply.status == 200
        finally:
            conn.close()
        return self.app.received[-1]  # requests are sequential

    def spans(self) -> list[dict[str, Any]]:
        if not self.span_file.exists():
            return []
        return [json.loads(line) for line in self.span_file.read_text().splitlines()]

    def span_of(self, trace_id: str) -> dict[str, Any]:
        wait_until(lambda: any(s["trace_id"] == trace_id for s in self.spans()), 10, "the span")
        return next(s for s in self.spans() if s["trace_id"] == trace_id)


@pytest.fixture(scope="module")
def hops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Hop]]:
    workdir = tmp_path_factory.mktemp("propagation")
    sidecars = Sidecars(workdir)
    apps: list[ChainApp] = []
    found = {}
    try:
        for name, propagators in (
            ("to-b3", ["b3", "b3multi"]),
            ("to-w3c", ["tracecontext", "baggage"]),
        ):
            app = ChainApp()
            apps.append(app)
            span_file = workdir / "spans" / f"{name}.jsonl"
            tracing = {
                "enabled": True,
                "propagators": propagators,
                "span_file": str(span_file),
                "export_interval": 0.05,
            }
            _, port = traced_sidecar(sidecars, workdir, name, tracing=tracing, app_port=app.port)
            found[name] = Hop(port, app, span_file)
        yield found
    finally:
        sidecars.stop_all()
        for app in apps:
            app.close()


def ids() -> tuple[str, str]:
    return uuid.uuid4().hex, uuid.uuid4().hex[:16]


def test_w3c_in_b3_out(hops: dict[str, Hop]) -> None:
    hop = hops["to-b3"]
    trace_id, parent = ids()
    got = hop.call({"traceparent": f"00-{trace_id}-{parent}-01", "tracestate": "vendor=x"})
    assert "traceparent" not in got
    b3_trace, b3_span, b3_sampled = got["b3"].split("-")
    assert (b3_trace, b3_sampled) == (trace_id, "1")
    assert (got["x-b3-traceid"], got["x-b3-spanid"], got["x-b3-sampled"]) == (
        trace_id,
        b3_span,
        "1",
    )
    span = hop.span_of(trace_id)
    assert span["kind"] == "server" and span["parent_id"] == parent
    assert span["span_id"] == b3_span  # the app's parent is this sidecar's SERVER span


def test_b3_single_in_w3c_out(hops: dict[str, Hop]) -> None:
    hop = hops["to-w3c"]
    trace_id, parent = ids()
    got = hop.call({"b3": f"{trace_id}-{parent}-1", "baggage": "user=42"})
    match = TRACEPARENT.fullmatch(got["traceparent"])
    assert match and match.group(1) == trace_id and got["traceparent"].endswith("-01")
    assert "b3" not in got and "x-b3-traceid" not in got
    assert got["baggage"] == "user=42"
    span = hop.span_of(trace_id)
    assert span["parent_id"] == parent and span["span_id"] == match.group(2)


def test_b3_multi_64_bit_in_w3c_out(hops: dict[str, Hop]) -> None:
    hop = hops["to-w3c"]
    short_trace, parent = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    got = hop.call({"X-B3-TraceId": short_trace, "X-B3-SpanId": parent, "X-B3-Sampled": "1"})
    assert got["traceparent"].startswith(f"00-{'0' * 16}{short_trace}-")
    assert hop.span_of("0" * 16 + short_trace)["parent_id"] == parent


def test_unsampled_context_is_passed_on_without_a_span(hops: dict[str, Hop]) -> None:
    hop = hops["to-w3c"]
    trace_id, parent = ids()
    got = hop.call({"traceparent": f"00-{trace_id}-{parent}-00"})
    assert got["traceparent"] == f"00-{trace_id}-{parent}-00"
    sampled_id, sampled_parent = ids()  # a sampled request after it, to know export ran
    hop.call({"traceparent": f"00-{sampled_id}-{sampled_parent}-01"})
    hop.span_of(sampled_id)
    assert not any(s["trace_id"] == trace_id for s in hop.spans())


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"traceparent": "00-ZZ-not-a-context"}, id="garbage"),
        pytest.param({"traceparent": f"00-{'A' * 32}-{'b' * 16}-01"}, id="upper-case"),
        pytest.param({"traceparent": f"00-{'0' * 32}-{'b' * 16}-01"}, id="zero-trace"),
        pytest.param({"traceparent": f"ff-{'a' * 32}-{'b' * 16}-01"}, id="version-ff"),
        pytest.param({"traceparent": f"00-{'a' * 32}-{'b' * 16}-01-extra"}, id="v00-trailer"),
        pytest.param({"traceparent": "00-" + "a" * 5000}, id="oversized"),
        pytest.param({"b3": "not-b3-at-all-really"}, id="b3-garbage"),
        pytest.param(
            {
                "traceparent": f"00-{'a' * 32}-{'b' * 16}-01",
                "tracestate": ",".join(f"k{i}=" + "v" * 40 for i in range(250)),
            },
            id="tracestate-10KB",
        ),
    ],
)
def test_broken_context_starts_a_new_trace(hops: dict[str, Hop], headers: dict[str, str]) -> None:
    hop = hops["to-w3c"]
    got = hop.call(headers)
    match = TRACEPARENT.fullmatch(got["traceparent"])
    assert match, got["traceparent"]
    trace_id = match.group(1)
    assert trace_id != "a" * 32
    assert "tracestate" not in got
    span = hop.span_of(trace_id)
    assert span["parent_id"] is None  # a new root


def test_future_version_traceparent_is_understood(hops: dict[str, Hop]) -> None:
    hop = hops["to-w3c"]
    trace_id, parent = ids()
    got = hop.call({"traceparent": f"01-{trace_id}-{parent}-03-whatever"})
    assert got["traceparent"].startswith(f"00-{trace_id}-")
    assert hop.span_of(trace_id)["parent_id"] == parent


def test_mesh_traces_prints_the_tree(hops: dict[str, Hop]) -> None:
    hop = hops["to-w3c"]
    trace_id, parent = ids()
    hop.call({"traceparent": f"00-{trace_id}-{parent}-01"})
    hop.span_of(trace_id)
    result = subprocess.run(
        [MESH, "traces", "--dir", str(hop.span_file.parent), "--trace", trace_id],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"trace {trace_id}  1 span(s)")
    assert "to-w3c  SERVER  GET /p/" in lines[1] and "  200  " in lines[1]
