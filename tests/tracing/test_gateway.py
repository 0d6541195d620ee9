"""Behind the ingress gateway: its SERVER span is the root (clients' context is dropped), each
attempt to a service is a CLIENT span under it, and the service sees that attempt as parent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.conftest import start_gateway, stop
from tests.support.processes import wait_until, write_yaml
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.timeout(60)


def test_gateway_spans(tmp_path: Path) -> None:
    span_file = tmp_path / "gateway.jsonl"
    with RecordingUpstream() as upstream:
        catalog = write_yaml(
            tmp_path / "catalog.yaml", {"services": {"shop": [f"127.0.0.1:{upstream.port}"]}}
        )
        gateway = start_gateway(
            tmp_path,
            {
                "catalog": str(catalog),
                "routes": [{"name": "shop", "prefix": "/", "service": "shop"}],
                "tracing": {
                    "enabled": True,
                    "span_file": str(span_file),
                    "export_interval": 0.05,
                },
            },
        )
        try:
            client_trace = "a" * 32
            reply = gateway.get(
                "/cart", headers=[("traceparent", f"00-{client_trace}-{'b' * 16}-01")]
            )
            assert reply.status == 200

            def spans() -> list[dict[str, Any]]:
                if not span_file.exists():
                    return []
                return [json.loads(line) for line in span_file.read_text().splitlines()]

            wait_until(lambda: len(spans()) >= 2, 10, "the gateway's two spans")
        finally:
            stop(gateway.proc)
    by_kind = {s["kind"]: s for s in spans()}
    server, client = by_kind["server"], by_kind["client"]
    assert server["trace_id"] != client_trace  # the outside client's context is not trusted
    assert server["parent_id"] is None
    assert client["trace_id"] == server["trace_id"]
    assert client["parent_id"] == server["span_id"]
    assert client["attributes"]["server.address"] == "shop"
    sent = upstream.requests[0].header("traceparent")
    assert sent == f"00-{server['trace_id']}-{client['span_id']}-01"
