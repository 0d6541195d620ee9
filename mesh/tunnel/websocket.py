"""WebSocket through the mesh: `Upgrade: websocket` is the one hop-by-hop header honoured.

The request travels through the layers like any other (routing, authorization, deadline,
endpoint choice); only its last step differs. Instead of a pooled HTTP/1.1 connection, the
endpoint gets a connection of its own (`EndpointPool.open`: connect timeout, TLS, identity
check), the handshake is sent with `Connection: upgrade`, and when the answer is
`101 Switching Protocols` both connections become a byte tunnel (`mesh.tunnel.pipe`). Any
other answer is an ordinary response, and the client's connection closes after it.

    client --GET, Upgrade--> outbound sidecar --mTLS--> inbound sidecar --> app
           <-----101-------                 <--101---                <-101-
           <======================= bytes both ways =========================>

Only `Upgrade: websocket` on a bodiless HTTP/1.1 GET listing `upgrade` in Connection counts;
any other Upgrade (h2c, TLS/1.0) is removed and the request goes on as plain HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

import httptools

from mesh.errors import MeshError, UpstreamProtocolError, UpstreamReset, UpstreamTimeout
from mesh.http1.client import request_head
from mesh.http1.message import (
    END_OF_HEAD,
    HOP_BY_HOP,
    Headers,
    Request,
    Response,
    append_headers,
)
from mesh.inline import Waiter
from mesh.tunnel.pipe import Finished, Side, Tunnel

if TYPE_CHECKING:
    from mesh.cluster import EndpointState

log = logging.getLogger("mesh.tunnel.websocket")

WEBSOCKET = b"websocket"
#: A refusal of the handshake is an ordinary response; bigger bodies are cut off.
MAX_REFUSAL_BODY = 256 * 1024
_DROPPED = HOP_BY_HOP | {b"content-length"}


class Upgrade:
    """What a request asks to switch to, and, once switched, the upstream end."""

    __slots__ = ("early", "protocol", "upstream")

    def __init__(self, protocol: bytes) -> None:
        self.protocol = protocol
        #: Bytes the client sent after the handshake, before the answer (kept for the tunnel).
        self.early = b""
        self.upstream: UpgradeClient | None = None


def websocket_upgrade(
    method: bytes, version: bytes, value: bytes, connection: list[bytes] | None, body: bool
) -> Upgrade | None:
    """The Upgrade a request head asks for, when it is one the mesh carries (WebSocket)."""
    if (
        method == b"GET"
        and version == b"1.1"
        and not body
        and connection is not None
        and b"upgrade" in connection
        and value.strip().lower() == WEBSOCKET
    ):
        return Upgrade(WEBSOCKET)
    return None


class UpgradeClient(Side):
    """The upstream connection of an upgrade: reads the handshake answer, then tunnels."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label
        self.waiter: Waiter[Response] = Waiter()
        self._parser = httptools.HttpResponseParser(self)
        self._handshaking = True
        self._status = 0
        self._reason = b""
        self._headers: Headers = []
        self._connection: list[bytes] = []
        self._body: list[bytes] = []
        self._body_size = 0

    # -- the handshake answer -----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if not self._handshaking:
            super().data_received(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._switched(data[offset:])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, MeshError) else UpstreamProtocolError())
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"upstream sent a malformed response: {exc}"))

    def on_message_begin(self) -> None:
        self._headers = []
        self._connection = []
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"connection":
            self._connection.extend(t.strip().lower() for t in value.split(b","))
        elif name not in _DROPPED:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, data: bytes) -> None:
        self._body_size += len(data)
        if self._body_size <= MAX_REFUSAL_BODY:
            self._body.append(data)

    def on_message_complete(self) -> None:
        if self._status == 101:
            return  # HttpParserUpgrade follows
        if self._status >= 200:
            self._refused()

    def _end_to_end(self) -> Headers:
        listed = set(self._connection)
        return [(n, v) for n, v in self._headers if n not in listed]

    def _switched(self, rest: bytes) -> None:
        """101: from here on every byte belongs to the tunnel."""
        self._handshaking = False
        transport = self.transport
        assert transport is not None
        transport.pause_reading()  # until the client's side joins
        if rest:
            super().data_received(rest)
        self.waiter.set_result(Response(101, self._end_to_end(), None, None, self._reason))

    def _refused(self) -> None:
        """Any final status but 101: an ordinary response; this connection is done."""
        self._handshaking = False
        body = b"".join(self._body)
        response = Response.local(self._status, body, self._end_to_end())
        response.reason = self._reason or response.reason
        self.waiter.set_result(response)
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: MeshError) -> None:
        self._handshaking = False
        self.waiter.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def expire(self) -> None:
        if self._handshaking:
            self._fail(UpstreamTimeout(f"no answer to the upgrade from {self.label} in time"))

    def eof_received(self) -> bool:
        if self._handshaking:
            return False  # connection_lost settles the handshake
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshaking:
            self._handshaking = False
            if self._status >= 200 and exc is None:
                self._refused()  # a close-delimited refusal
            else:
                self.waiter.set_exception(
                    UpstreamReset(f"{self.label} closed the connection during the upgrade")
                )
        super().connection_lost(exc)


async def exchange(request: Request) -> Response:
    """Send an upgrade request on a connection of its own; the answer, 101 or not."""
    upgrade: Upgrade = request.upgrade
    state: EndpointState = request.endpoint
    pool = state.pool
    client = cast(UpgradeClient, await pool.open(lambda: UpgradeClient(pool.label)))
    transport = client.transport
    assert transport is not None
    head = request_head(request)
    transport.write(
        head[:-2] + b"connection: upgrade\r\nupgrade: " + upgrade.protocol + b"\r\n\r\n"
    )
    timer = None
    if request.deadline is not None:
        timer = asyncio.get_running_loop().call_at(request.deadline, client.expire)
    try:
        response = await client.waiter
    except BaseException:
        transport.abort()
        raise
    finally:
        if timer is not None:
            timer.cancel()
    if response.status == 101:
        upgrade.upstream = client
    return response


def splice(
    transport: asyncio.Transport, upgrade: Upgrade, response: Response, on_finished: Finished
) -> None:
    """Answer the client's handshake with the 101 and join its connection to the upstream's.

    `transport` is the client's connection, paused since its handshake was read; it gets a
    new protocol here, so its HTTP/1.1 server connection sees nothing more of it.
    """
    upstream = upgrade.upstream
    assert upstream is not None
    lines = [b"HTTP/1.1 101 ", response.reason]
    append_headers(lines, response.headers)
    lines.append(b"\r\nconnection: upgrade\r\nupgrade: " + upgrade.protocol + END_OF_HEAD)
    transport.write(b"".join(lines))
    client = Side()
    transport.set_protocol(client)
    client.connection_made(transport)
    if upgrade.early:
        client.pending.append(upgrade.early)
        client.received += len(upgrade.early)
    Tunnel(client, upstream, on_finished).start()
