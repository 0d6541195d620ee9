"""The gRPC option: spans reach an OTLP/gRPC receiver through the SDK's exporter."""

from __future__ import annotations

import http.client
import threading
import uuid
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.support.processes import Sidecars, wait_until
from tests.tracing.apps import ChainApp
from tests.tracing.conftest import traced_sidecar

pytestmark = pytest.mark.timeout(60)


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.lock = threading.Lock()

    def Export(self, request: ExportTraceServiceRequest, context: Any) -> Any:
        with self.lock:
            self.requests.append(request)
        return ExportTraceServiceResponse()

    def trace_ids(self) -> set[str]:
        with self.lock:
            return {
                span.trace_id.hex()
                for request in self.requests
                for rs in request.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            }


def test_spans_over_grpc(tmp_path: Path) -> None:
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sidecars = Sidecars(tmp_path)
    app = ChainApp()
    try:
        tracing = {
            "endpoint": f"http://127.0.0.1:{port}",
            "protocol": "grpc",
            "export_interval": 0.05,
        }
        _, listen = traced_sidecar(
            sidecars, tmp_path, "grpc-traced", tracing=tracing, app_port=app.port
        )
        trace_id = uuid.uuid4().hex
        conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
        conn.request("GET", "/", headers={"traceparent": f"00-{trace_id}-{'1' * 16}-01"})
        assert conn.getresponse().status == 200
        conn.close()
        wait_until(lambda: trace_id in receiver.trace_ids(), 15, "the span over gRPC")
        resource = receiver.requests[0].resource_spans[0].resource
        names = {a.key: a.value.string_value for a in resource.attributes}
        assert names["service.name"] == "grpc-traced"
    finally:
        sidecars.stop_all()
        app.close()
        server.stop(0)
