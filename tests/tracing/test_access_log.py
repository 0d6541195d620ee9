"""The access log joins up with traces and masks what config names as sensitive."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from tests.support.processes import Sidecars, wait_until
from tests.tracing.apps import ChainApp
from tests.tracing.conftest import traced_sidecar

pytestmark = pytest.mark.timeout(60)


def test_trace_ids_and_masked_fields(tmp_path: Path) -> None:
    workdir = tmp_path
    sidecars = Sidecars(workdir)
    app = ChainApp()
    try:
        proc, port = traced_sidecar(
            sidecars,
            workdir,
            "logged",
            tracing={"enabled": True, "span_file": str(workdir / "spans.jsonl")},
            app_port=app.port,
            extra={
                "access_log": True,
                "access_log_fields": {"query": True, "headers": ["authorization", "x-user"]},
            },
        )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(
            "GET",
            "/search?q=shoes&token=abc123&Password=hunter2",
            headers={"Authorization": "Bearer s3cret", "X-User": "bob"},
        )
        assert conn.getresponse().status == 200
        conn.close()
        wait_until(lambda: bool(proc.access_log()), 10, "the access log line")
        line = proc.access_log()[-1]
        assert line["query"] == "q=shoes&token=***&Password=***"
        assert line["headers"] == {"authorization": "***", "x-user": "bob"}
        traceparent = app.received[-1]["traceparent"]
        assert line["trace_id"] == traceparent.split("-")[1]
        assert line["span_id"] == traceparent.split("-")[2]
        out = proc.stdout_path.read_text()
        assert "s3cret" not in out and "abc123" not in out and "hunter2" not in out
    finally:
        sidecars.stop_all()
        app.close()
