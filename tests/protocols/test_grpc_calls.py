"""Real gRPC calls through a sidecar pair: the sidecars see calls, not bytes.

    grpcio client -> caller sidecar (upstream `greeter`, protocol grpc) --h2 over mTLS-->
        greeter sidecar (app_protocol grpc) --h2c--> grpcio server

Unary and streaming calls with their trailers, a server answering UNAVAILABLE retried by
the caller's sidecar (attempts counted at the server), `grpc-timeout` honoured, proxy-made
failures (no endpoints, forbidden) as proper gRPC statuses with `x-mesh-error`, and the
status in the sidecar's metrics.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.tracing.spanfile import read_spans
from tests.support.certs import Pki
from tests.support.h2peer import H2Peer, H2Response
from tests.support.processes import (
    MeshProcess,
    Sidecars,
    free_port,
    http_get,
    wait_until,
    write_yaml,
)

pytestmark = pytest.mark.timeout(60)

SERVICE = "mesh.test.Greeter"


class Greeter:
    """Raw-bytes methods (no generated code), counting the calls that reach it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: Seconds each Slow call had left when it arrived (its grpc-timeout).
        self.time_given: list[float | None] = []
        self.flaky_calls = 0

    def hello(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata((("x-trailer", "kept"), ("x-bin-bin", b"\x00\xff")))
        return b"hello " + request

    def count(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return b"%d" % sum(len(r) for r in requests)

    def split(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        context.set_trailing_metadata((("x-streamed", "yes"),))
        yield from (bytes([b]) for b in request)

    def echo(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            yield request.upper()

    def flaky(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """UNAVAILABLE on the first call of each pair, OK on the second."""
        with self.lock:
            self.flaky_calls += 1
            first = self.flaky_calls % 2 == 1
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return b"ready"

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Answers only once the call is over (cancelled, or past its deadline)."""
        self.time_given.append(context.time_remaining())
        over = threading.Event()
        context.add_callback(over.set)
        over.wait(10)
        return request

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Hello": grpc.unary_unary_rpc_method_handler(self.hello),
                "Count": grpc.stream_unary_rpc_method_handler(self.count),
                "Split": grpc.unary_stream_rpc_method_handler(self.split),
                "Echo": grpc.stream_stream_rpc_method_handler(self.echo),
                "Flaky": grpc.unary_unary_rpc_method_handler(self.flaky),
                "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            },
        )


@dataclass
class Mesh:
    greeter: Greeter
    channel: grpc.Channel
    #: The caller sidecar's port for greeter.
    port: int
    #: A port whose upstream has no endpoints, and one whose service refuses the caller.
    empty: grpc.Channel
    denied: grpc.Channel
    caller: MeshProcess
    spans: Path


@pytest.fixture(scope="module")
def mesh(pki: Pki, sidecars: Sidecars) -> Iterator[Mesh]:
    greeter = Greeter()
    server = grpc.server(ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers((greeter.handler(),))
    app_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    inbound, locked = free_port(), free_port()
    for name, listen, policy in (
        ("greeter", inbound, {}),
        ("locked", locked, {"authorization": {"deny": ["caller"]}}),
    ):
        config = {"app_protocol": "grpc", **policy}
        sidecars.start(
            "--service", name, "--app-port", str(app_port), "--listen", f"127.0.0.1:{listen}",
            "--config", str(write_yaml(sidecars.log_dir / f"{name}.yaml", config)),
            *pki.issue(name).flags(), name=name,
        )  # fmt: skip
    catalog = write_yaml(
        sidecars.log_dir / "grpc-catalog.yaml",
        {
            "services": {
                "greeter": [f"127.0.0.1:{inbound}"],
                "locked": [f"127.0.0.1:{locked}"],
                "nobody": [],
            }
        },
    )
    ports = {name: free_port() for name in ("greeter", "locked", "nobody")}
    caller_config = {
        "tracing": {
            "enabled": True,
            "span_file": str(sidecars.log_dir / "caller-spans.jsonl"),
            "sampler": "always_on",
            "export_interval": 0.05,
        },
        "upstreams": [
            {"name": name, "local_port": port, "protocol": "grpc"} for name, port in ports.items()
        ],
    }
    caller = sidecars.start(
        "--service", "caller", "--catalog", str(catalog),
        "--config", str(write_yaml(sidecars.log_dir / "caller.yaml", caller_config)),
        *pki.issue("caller").flags(), name="grpc-caller",
    )  # fmt: skip
    channels = {name: grpc.insecure_channel(f"127.0.0.1:{port}") for name, port in ports.items()}
    try:
        spans = sidecars.log_dir / "caller-spans.jsonl"
        yield Mesh(
            greeter,
            channels["greeter"],
            ports["greeter"],
            channels["nobody"],
            channels["locked"],
            caller,
            spans,
        )
    finally:
        for chan in channels.values():
            chan.close()
        server.stop(grace=None)


def method(chan: grpc.Channel, name: str, kind: str = "unary_unary") -> Any:
    return getattr(chan, kind)(f"/{SERVICE}/{name}")


def test_unary_call_with_its_trailers(mesh: Mesh) -> None:
    response, call = method(mesh.channel, "Hello").with_call(b"mesh", timeout=10)
    assert response == b"hello mesh"
    assert call.code() == grpc.StatusCode.OK
    trailers = dict(call.trailing_metadata())
    assert trailers["x-trailer"] == "kept"
    assert trailers["x-bin-bin"] == b"\x00\xff"


def test_client_streaming(mesh: Mesh) -> None:
    chunks = [bytes(1000)] * 100
    assert method(mesh.channel, "Count", "stream_unary")(iter(chunks), timeout=10) == b"100000"


def test_server_streaming_with_trailers(mesh: Mesh) -> None:
    call = method(mesh.channel, "Split", "unary_stream")(b"abcdef", timeout=10)
    assert list(call) == [b"a", b"b", b"c", b"d", b"e", b"f"]
    assert dict(call.trailing_metadata())["x-streamed"] == "yes"


def test_bidirectional_stream(mesh: Mesh) -> None:
    messages = [f"message {i}".encode() for i in range(50)]
    replies = list(method(mesh.channel, "Echo", "stream_stream")(iter(messages), timeout=10))
    assert replies == [m.upper() for m in messages]


def test_unavailable_is_retried_by_the_callers_sidecar(mesh: Mesh) -> None:
    before = mesh.greeter.flaky_calls
    response, call = method(mesh.channel, "Flaky").with_call(b"x", timeout=10)
    assert response == b"ready" and call.code() == grpc.StatusCode.OK
    assert mesh.greeter.flaky_calls - before == 2, "one UNAVAILABLE, then one retry"


def test_grpc_timeout_bounds_the_call(mesh: Mesh) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failed:
        method(mesh.channel, "Slow")(b"x", timeout=0.5)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.0


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def raw_call(mesh: Mesh, method: str, grpc_timeout: str) -> H2Response:
    """One unary call from a bare HTTP/2 client: no gRPC library to give up on its own."""
    with H2Peer(mesh.port) as peer:
        return peer.request(
            "POST",
            f"/{SERVICE}/{method}",
            [
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("grpc-timeout", grpc_timeout),
            ],
            body=grpc_frame(b"x"),
        )


def test_the_sidecar_ends_a_call_at_its_grpc_timeout(mesh: Mesh) -> None:
    """A raw HTTP/2 client that never gives up: the caller's sidecar answers for it."""
    started = time.monotonic()
    answer = raw_call(mesh, "Slow", grpc_timeout="300m")
    elapsed = time.monotonic() - started
    assert answer.status == 200
    status = {**answer.headers, **answer.trailers}
    assert status["grpc-status"] == "4", status  # DEADLINE_EXCEEDED
    # The app, told the time left, may give up a moment before the sidecars do.
    assert status.get("x-mesh-error", "upstream-timeout") == "upstream-timeout"
    assert 0.25 < elapsed < 1.5
    given = mesh.greeter.time_given[-1]
    assert given is not None and given <= 0.3, "the app was told the time left, not more"


def test_a_malformed_grpc_timeout_is_internal(mesh: Mesh) -> None:
    answer = raw_call(mesh, "Hello", grpc_timeout="soon")
    assert answer.status == 200
    assert answer.headers["grpc-status"] == "13"  # INTERNAL
    assert answer.headers["x-mesh-error"] == "bad-request"


def test_no_endpoints_is_unavailable_with_the_mesh_reason(mesh: Mesh) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        method(mesh.empty, "Hello")(b"x", timeout=10)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no-endpoints" in failed.value.details()
    assert dict(failed.value.trailing_metadata())["x-mesh-error"] == "no-endpoints"


def test_forbidden_is_permission_denied_with_the_mesh_reason(mesh: Mesh) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        method(mesh.denied, "Hello")(b"x", timeout=10)
    assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert dict(failed.value.trailing_metadata())["x-mesh-error"] == "forbidden"


def test_metrics_count_calls_by_grpc_status(mesh: Mesh) -> None:
    method(mesh.channel, "Hello")(b"counted", timeout=10)
    with pytest.raises(grpc.RpcError):
        method(mesh.empty, "Hello")(b"x", timeout=10)
    assert mesh.caller.admin_port is not None
    _, _, body = http_get(f"http://127.0.0.1:{mesh.caller.admin_port}/metrics")
    text = body.decode()
    ok = (
        'mesh_grpc_responses_total{direction="outbound",grpc_code="OK",service="caller",'
        'upstream="greeter"}'
    )
    assert any(line.startswith(ok) for line in text.splitlines()), [
        line for line in text.splitlines() if "grpc" in line or "requests_total" in line
    ]
    unavailable = (
        'mesh_grpc_responses_total{direction="outbound",grpc_code="UNAVAILABLE",'
        'service="caller",upstream="nobody"}'
    )
    assert any(line.startswith(unavailable) for line in text.splitlines())


def test_spans_carry_the_grpc_status_of_each_attempt(mesh: Mesh) -> None:
    method(mesh.channel, "Flaky")(b"traced", timeout=10)

    def flaky_spans() -> list[dict[str, Any]]:
        """The caller sidecar's CLIENT spans of Flaky calls, one per attempt."""
        spans = read_spans([mesh.spans]) if mesh.spans.exists() else []
        return [s for s in spans if str(s["attributes"].get("url.full")).endswith("/Flaky")]

    def complete() -> bool:
        return len(flaky_spans()) >= 2

    wait_until(complete, 10, "the spans of a retried call")
    spans = flaky_spans()
    attempts = {(s["attributes"]["rpc.grpc.status_code"], s["status"]) for s in spans}
    assert {(14, "error"), (0, "ok")} <= attempts
    assert {s["attributes"]["rpc.system"] for s in spans} == {"grpc"}
    resent = [s for s in spans if s["attributes"].get("http.request.resend_count") == 1]
    assert resent and all(s["attributes"]["rpc.grpc.status_code"] == 0 for s in resent)
