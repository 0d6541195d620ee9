"""WebSocket through a real sidecar pair with mTLS, between a real client and server.

    websockets client -> client sidecar (upstream `chat`) --mTLS--> chat sidecar -> websockets
                                                                                  echo server

The app greets each connection, then echoes every message; `close:<code>` makes it close.
Checks: messages both ways (text, binary, 1 MiB), the close handshake from either end, the
tunnel's idle timeout, one access-log line per WebSocket, a refused handshake reaching the
client as an HTTP status, and a non-WebSocket Upgrade (h2c) still removed.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import Server, ServerConnection, serve

from tests.support.certs import Pki, spiffe_id
from tests.support.processes import MeshProcess, Sidecars, free_port, wait_until, write_yaml
from tests.support.rawclient import HttpConnection

pytestmark = pytest.mark.timeout(60)

IDLE_TIMEOUT = 1.5
HANDSHAKE = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


class EchoApp:
    """A websockets server in a thread; remembers each handshake's headers and close codes."""

    def __init__(self) -> None:
        self.handshakes: list[dict[str, str]] = []
        self.plain: list[dict[str, str]] = []
        #: The close code each connection ended with, by request path.
        self.close_codes: dict[str, int | None] = {}
        self.server: Server = serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            ping_interval=None,
            compression=None,
        )
        self.port = self.server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        if request.path == "/refuse":
            return conn.respond(HTTPStatus.FORBIDDEN, "not today\n")
        if "upgrade" not in headers or headers["upgrade"].lower() != "websocket":
            self.plain.append(headers)
            return conn.respond(HTTPStatus.OK, "plain http\n")
        self.handshakes.append(headers)
        return None

    def _handle(self, conn: ServerConnection) -> None:
        path = conn.request.path if conn.request else ""
        conn.send(f"hello {path}")
        try:
            for message in conn:
                if isinstance(message, str) and message.startswith("close:"):
                    conn.close(int(message.split(":")[1]), "asked to")
                    break
                conn.send(message)
        except ConnectionClosed:
            pass
        self.close_codes[path] = conn.close_code

    def stop(self) -> None:
        self.server.shutdown()
        self._thread.join(5)


@dataclass
class Pair:
    app: EchoApp
    chat: MeshProcess
    client: MeshProcess
    #: The client sidecar's local port for service `chat`.
    port: int
    #: The client sidecar's HTTP-proxy port (routes by Host).
    proxy_port: int

    def connect(self, path: str = "/room") -> ClientConnection:
        return connect(
            f"ws://127.0.0.1:{self.port}{path}",
            open_timeout=10,
            close_timeout=5,
            ping_interval=None,
            compression=None,
            max_size=4 * 1024 * 1024,
        )

    def access_lines(self, proc: MeshProcess, path: str) -> list[dict[str, object]]:
        return [line for line in proc.access_log() if line["path"] == path]


@pytest.fixture(scope="module")
def pair(pki: Pki, sidecars: Sidecars) -> Iterator[Pair]:
    app = EchoApp()
    inbound, port, proxy_port = free_port(), free_port(), free_port()
    tunnel = {"tunnel": {"idle_timeout": IDLE_TIMEOUT}}
    chat = sidecars.start(
        "--service", "chat", "--app-port", str(app.port), "--listen", f"127.0.0.1:{inbound}",
        "--config", str(write_yaml(sidecars.log_dir / "chat.yaml", tunnel)),
        "--access-log", *pki.issue("chat").flags(), name="chat",
    )  # fmt: skip
    catalog = write_yaml(
        sidecars.log_dir / "catalog.yaml", {"services": {"chat": [f"127.0.0.1:{inbound}"]}}
    )
    client = sidecars.start(
        "--service", "client", "--catalog", str(catalog), "--upstream", f"chat={port}",
        "--proxy-port", str(proxy_port),
        "--config", str(write_yaml(sidecars.log_dir / "client.yaml", tunnel)),
        "--access-log", *pki.issue("client").flags(), name="client",
    )  # fmt: skip
    try:
        yield Pair(app, chat, client, port, proxy_port)
    finally:
        app.stop()


def digest(message: str | bytes) -> str:
    return hashlib.sha256(message if isinstance(message, bytes) else message.encode()).hexdigest()


def test_messages_flow_both_ways_through_the_pair(pair: Pair) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB, every byte value
    with pair.connect("/both-ways") as ws:
        assert ws.recv(timeout=5) == "hello /both-ways"  # server to client, unprompted
        for message in ["ping", "snow ☃ man", b"\x00\xff binary", big]:
            ws.send(message)
            assert digest(ws.recv(timeout=10)) == digest(message)
    seen = pair.app.handshakes[-1]
    # The app learns who called, from the sidecar, as for any request.
    assert seen["x-forwarded-client-cert"] == f"By={spiffe_id('chat')};URI={spiffe_id('client')}"
    assert seen["sec-websocket-version"] == "13"


def test_client_close_handshake_reaches_the_app(pair: Pair) -> None:
    with pair.connect("/client-closes") as ws:
        assert ws.recv(timeout=5) == "hello /client-closes"
        ws.close(code=4000, reason="bye")
    wait_until(lambda: "/client-closes" in pair.app.close_codes, 5, "the app to see the close")
    assert pair.app.close_codes["/client-closes"] == 4000
    assert ws.close_code == 4000


def test_app_closing_closes_the_client_side(pair: Pair) -> None:
    with pair.connect("/app-closes") as ws:
        assert ws.recv(timeout=5) == "hello /app-closes"
        ws.send("close:4001")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    assert closed.value.rcvd.reason == "asked to"


def test_each_websocket_is_one_long_request_in_both_access_logs(pair: Pair) -> None:
    with pair.connect("/logged") as ws:
        ws.recv(timeout=5)
        ws.send(b"x" * 10_000)
        ws.recv(timeout=5)
    for proc in (pair.client, pair.chat):
        wait_until(lambda p=proc: bool(pair.access_lines(p, "/logged")), 5, "an access log line")
        (line,) = pair.access_lines(proc, "/logged")
        assert line["status"] == 101
        assert line["service"] == "chat"
        assert isinstance(line["bytes_out"], int) and line["bytes_out"] > 10_000
        assert isinstance(line["bytes_in"], int) and line["bytes_in"] > 10_000


def test_idle_websocket_is_closed_after_the_idle_timeout(pair: Pair) -> None:
    with pair.connect("/idle") as ws:
        assert ws.recv(timeout=5) == "hello /idle"
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=IDLE_TIMEOUT * 6)
        waited = time.monotonic() - started
    assert IDLE_TIMEOUT * 0.9 <= waited < IDLE_TIMEOUT * 6
    wait_until(lambda: bool(pair.access_lines(pair.client, "/idle")), 5, "an access log line")
    (line,) = pair.access_lines(pair.client, "/idle")
    assert line["status"] == 101
    assert line["mesh_error"] == "tunnel-idle-timeout"


def test_refused_handshake_reaches_the_client_as_its_status(pair: Pair) -> None:
    with pytest.raises(InvalidStatus) as refused:
        pair.connect("/refuse")
    assert refused.value.response.status_code == 403
    assert refused.value.response.body == b"not today\n"
    # The same refusal seen raw: the connection is not reused after an upgrade attempt.
    with HttpConnection(pair.port) as conn:
        conn.request("GET", "/refuse", HANDSHAKE)
        assert conn.read_response().status == 403
        assert conn.closed_by_peer()


def test_other_upgrades_are_removed_and_the_request_goes_on_as_http(pair: Pair) -> None:
    headers = [
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    ]
    before = len(pair.app.plain)
    with HttpConnection(pair.port) as conn:
        conn.request("GET", "/h2c", headers)
        response = conn.read_response()
        assert response.status == 200
        assert response.body == b"plain http\n"
        # The connection stays HTTP/1.1: a second request on it is answered as usual.
        conn.request("GET", "/h2c-again", [])
        assert conn.read_response().status == 200
    seen = pair.app.plain[before]
    assert "upgrade" not in seen
    assert "http2-settings" not in seen


def test_websocket_upgrade_not_listed_in_connection_is_not_honoured(pair: Pair) -> None:
    before = len(pair.app.plain)
    headers = [("Connection", "keep-alive"), *HANDSHAKE[1:]]
    with HttpConnection(pair.port) as conn:
        conn.request("GET", "/unlisted-upgrade", headers)
        response = conn.read_response()
    assert response.status == 200
    assert "upgrade" not in pair.app.plain[before]


def test_websocket_through_the_proxy_port_is_routed_by_host(pair: Pair) -> None:
    sock = socket.create_connection(("127.0.0.1", pair.proxy_port), timeout=10)
    with connect(
        "ws://chat/via-proxy", sock=sock, open_timeout=10, ping_interval=None, compression=None
    ) as ws:
        assert ws.recv(timeout=5) == "hello /via-proxy"
        ws.send("through the proxy")
        assert ws.recv(timeout=5) == "through the proxy"
