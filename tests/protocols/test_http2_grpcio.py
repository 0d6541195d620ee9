"""The HTTP/2 transport carries real gRPC (grpcio on both ends) through an mTLS sidecar pair.

    grpcio client -> client sidecar (upstream `api`, protocol grpc) --mTLS, h2--> api sidecar
                  (app_protocol grpc) --h2c--> grpcio server

Transport only: calls of every shape, status and trailing metadata, a message larger than
the flow-control windows. gRPC semantics (retries on status, gRPC-shaped proxy errors,
grpc-timeout) are tested with the layers that implement them.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from tests.support.certs import Pki
from tests.support.processes import Sidecars, free_port, write_yaml

pytestmark = pytest.mark.timeout(60)


def _unary(request: bytes, context: Any) -> bytes:
    if request == b"unavailable":
        context.abort(grpc.StatusCode.UNAVAILABLE, "down for now")
    context.set_trailing_metadata((("x-served-by", "api"),))
    return b"echo:" + request


def _server_stream(request: bytes, context: Any) -> Iterator[bytes]:
    for i in range(5):
        yield b"%s-%d" % (request, i)


def _client_stream(requests: Iterator[bytes], context: Any) -> bytes:
    return b"+".join(requests)


def _bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    for request in requests:
        yield request.upper()


@pytest.fixture(scope="module")
def channel(pki: Pki, sidecars: Sidecars) -> Iterator[grpc.Channel]:
    handler = grpc.method_handlers_generic_handler(
        "mesh.test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((handler,))
    app_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    inbound, port = free_port(), free_port()
    sidecars.start(
        "--service", "api", "--app-port", str(app_port), "--listen", f"127.0.0.1:{inbound}",
        "--config", str(write_yaml(sidecars.log_dir / "grpc-api.yaml", {"app_protocol": "grpc"})),
        *pki.issue("api").flags(), name="grpc-api",
    )  # fmt: skip
    catalog = write_yaml(
        sidecars.log_dir / "grpc-catalog.yaml", {"services": {"api": [f"127.0.0.1:{inbound}"]}}
    )
    sidecars.start(
        "--service", "client", "--catalog", str(catalog), "--upstream", f"api={port}/grpc",
        *pki.issue("client").flags(), name="grpc-client",
    )  # fmt: skip
    with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
        yield chan
    server.stop(0)


def test_unary_call_with_trailing_metadata(channel: grpc.Channel) -> None:
    reply, call = channel.unary_unary("/mesh.test.Echo/Unary").with_call(b"hi", timeout=10)
    assert reply == b"echo:hi"
    assert call.code() == grpc.StatusCode.OK
    assert ("x-served-by", "api") in tuple(call.trailing_metadata() or ())


def test_streaming_calls_of_every_shape(channel: grpc.Channel) -> None:
    server_stream = channel.unary_stream("/mesh.test.Echo/ServerStream")(b"s", timeout=10)
    assert list(server_stream) == [b"s-%d" % i for i in range(5)]
    client_stream = channel.stream_unary("/mesh.test.Echo/ClientStream")
    assert client_stream(iter([b"a", b"b", b"c"]), timeout=10) == b"a+b+c"
    bidi = channel.stream_stream("/mesh.test.Echo/Bidi")(iter([b"x", b"y"]), timeout=10)
    assert list(bidi) == [b"X", b"Y"]


def test_an_error_status_reaches_the_client(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        channel.unary_unary("/mesh.test.Echo/Unary")(b"unavailable", timeout=10)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failed.value.details() == "down for now"


def test_a_message_larger_than_the_windows(channel: grpc.Channel) -> None:
    message = bytes(range(256)) * (12 * 1024)  # 3 MiB
    assert channel.unary_unary("/mesh.test.Echo/Unary")(message, timeout=20) == b"echo:" + message
