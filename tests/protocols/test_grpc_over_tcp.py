"""gRPC today: a gRPC service declared TCP crosses the mesh in an mTLS tunnel, untouched.

    grpcio client -> client sidecar (upstream `grpc`, protocol tcp) --mTLS--> grpc sidecar
                                                         (app_protocol tcp) -> grpcio server

The sidecars see bytes, not calls (authorization per connection, no per-call retries or
metrics); what the test shows is that gRPC itself works end to end: unary and streaming
calls, statuses and trailers intact, deadlines honoured.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from tests.support.certs import Pki
from tests.support.processes import Sidecars, free_port, write_yaml

pytestmark = pytest.mark.timeout(60)

SERVICE = "mesh.test.Echo"


class EchoService:
    """Raw-bytes methods (no generated code): unary, bidirectional stream, fail, slow."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata((("x-trailer", "kept"),))
        return request[::-1]

    def stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            yield request.upper()

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.UNAVAILABLE, "try again later")
        raise AssertionError("abort raises")

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.release.wait(10)  # released by the test once the client gave up
        return request

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "Stream": grpc.stream_stream_rpc_method_handler(self.stream),
                "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
                "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            },
        )


@pytest.fixture(scope="module")
def channel(pki: Pki, sidecars: Sidecars) -> Iterator[tuple[grpc.Channel, EchoService]]:
    service = EchoService()
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((service.handler(),))
    app_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    inbound, port = free_port(), free_port()
    sidecars.start(
        "--service", "grpc", "--app-port", str(app_port), "--listen", f"127.0.0.1:{inbound}",
        "--config", str(write_yaml(sidecars.log_dir / "grpc.yaml", {"app_protocol": "tcp"})),
        *pki.issue("grpc").flags(), name="grpc",
    )  # fmt: skip
    catalog = write_yaml(
        sidecars.log_dir / "grpc-catalog.yaml", {"services": {"grpc": [f"127.0.0.1:{inbound}"]}}
    )
    sidecars.start(
        "--service", "caller", "--catalog", str(catalog), "--upstream", f"grpc={port}/tcp",
        *pki.issue("caller").flags(), name="grpc-caller",
    )  # fmt: skip
    chan = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield chan, service
    finally:
        service.release.set()
        chan.close()
        server.stop(grace=None)


def method(chan: grpc.Channel, name: str, kind: str = "unary_unary") -> Any:
    return getattr(chan, kind)(f"/{SERVICE}/{name}")


def test_unary_call_with_its_trailers(channel: tuple[grpc.Channel, EchoService]) -> None:
    chan, _ = channel
    response, call = method(chan, "Unary").with_call(b"hello mesh", timeout=10)
    assert response == b"hsem olleh"
    assert call.code() == grpc.StatusCode.OK
    assert ("x-trailer", "kept") in call.trailing_metadata()


def test_bidirectional_stream(channel: tuple[grpc.Channel, EchoService]) -> None:
    chan, _ = channel
    messages = [f"message {i}".encode() for i in range(50)]
    replies = list(method(chan, "Stream", "stream_stream")(iter(messages), timeout=10))
    assert replies == [m.upper() for m in messages]


def test_status_from_the_server_arrives_intact(channel: tuple[grpc.Channel, EchoService]) -> None:
    chan, _ = channel
    with pytest.raises(grpc.RpcError) as failed:
        method(chan, "Fail")(b"x", timeout=10)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failed.value.details() == "try again later"


def test_deadline_is_honoured(channel: tuple[grpc.Channel, EchoService]) -> None:
    chan, service = channel
    with pytest.raises(grpc.RpcError) as failed:
        method(chan, "Slow")(b"x", timeout=0.5)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    service.release.set()
