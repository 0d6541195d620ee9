"""The directly written OTLP protobuf decodes, with opentelemetry-proto, to the same spans the
SDK's own encoder produces from the same records."""

from __future__ import annotations

from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from mesh.tracing.export import OtlpExport, OtlpHttpExport
from mesh.tracing.recorder import CLIENT, SERVER, SpanRecord

RECORDS: list[SpanRecord] = [
    (
        SERVER, b"4bf92f3577b34da6a3ce929d0e0e4736", b"00f067aa0ba902b7", b"",
        1_700_000_000_000_000_000,
        1_700_000_000_002_000_000, b"GET", b"/orders/7?x=1", b"orders:8080", 200, "", "10.0.0.9", 0,
        b"http", b"vendor=a", "orders", -1,
    ),
    (
        CLIENT, b"4bf92f3577b34da6a3ce929d0e0e4736", b"b7ad6b7169203331", b"00f067aa0ba902b7",
        1_700_000_000_000_500_000, 1_700_000_000_001_500_000, b"POST", b"/pay", b"127.0.0.1:9001",
        0, "upstream-connect-failed", "127.0.0.1:21001", 2, b"http", b"", "payments", -1,
    ),
    (
        CLIENT, b"4bf92f3577b34da6a3ce929d0e0e4736", b"c7ad6b7169203331", b"00f067aa0ba902b7",
        1_700_000_000_000_600_000, 1_700_000_000_001_600_000, b"GET", b"/x", b"127.0.0.1:9001",
        503, "", "127.0.0.1:21001", 0, b"http", b"", "payments", -1,
    ),
    (
        CLIENT, b"4bf92f3577b34da6a3ce929d0e0e4736", b"d7ad6b7169203331", b"00f067aa0ba902b7",
        1_700_000_000_000_700_000, 1_700_000_000_001_700_000, b"POST", b"/greet.Greeter/Hello",
        b"127.0.0.1:9001", 200, "", "127.0.0.1:21001", 0, b"http", b"", "greeter", 14,
    ),
]  # fmt: skip

RESOURCE = {"service.name": "orders", "deployment.environment": "test"}


def test_direct_encoding_matches_the_sdk() -> None:
    direct = OtlpHttpExport("http://127.0.0.1:9/v1/traces", {}, 0.1, RESOURCE)
    sdk = OtlpExport("http://127.0.0.1:9/v1/traces", "http/protobuf", {}, 0.1, RESOURCE)
    try:
        ours = ExportTraceServiceRequest.FromString(direct.encode(RECORDS))
        theirs = encode_spans(sdk.spans(RECORDS))
    finally:
        direct.shutdown()
        sdk.shutdown()
    ours_dict, theirs_dict = MessageToDict(ours), MessageToDict(theirs)
    # The SDK adds resource attributes of its own (telemetry.sdk.*, service.instance.id).
    for data in (ours_dict, theirs_dict):
        for rs in data["resourceSpans"]:
            rs["resource"]["attributes"] = sorted(
                (a for a in rs["resource"]["attributes"] if a["key"] in RESOURCE),
                key=lambda a: a["key"],
            )
            for ss in rs["scopeSpans"]:
                ss["scope"] = {"name": ss["scope"]["name"]}
                for span in ss["spans"]:
                    span["attributes"] = sorted(span["attributes"], key=lambda a: a["key"])
    assert ours_dict == theirs_dict
    spans = ours.resource_spans[0].scope_spans[0].spans
    assert [s.kind for s in spans] == [2, 3, 3, 3]
    assert spans[1].status.code == 2 and spans[1].status.message == "upstream-connect-failed"
    assert spans[2].status.message == "HTTP 503"
    assert spans[3].status.code == 2 and spans[3].status.message == "UNAVAILABLE"
    grpc = {a.key: a.value for a in spans[3].attributes}
    assert grpc["rpc.system"].string_value == "grpc"
    assert grpc["rpc.grpc.status_code"].int_value == 14
    assert spans[0].trace_state == "vendor=a"
