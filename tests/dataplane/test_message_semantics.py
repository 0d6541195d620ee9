"""What the sidecar pair does to messages it forwards (RELIABILITY rows 7, 28, 43).

Bodyless responses (HEAD with Content-Length, 204, 304) keep their meaning and leave the
connection usable; Content-Length: 0 is kept and no Transfer-Encoding is invented; a
close-delimited upstream response arrives whole. Hop-by-hop headers are dropped in both
directions, X-Forwarded-For/-Proto and X-Request-Id are set from what the proxy really saw,
and sequential requests on one client connection share one upstream connection.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from tests.dataplane.conftest import MeshPair
from tests.support.processes import wait_until
from tests.support.rawclient import HttpConnection, parse_head, send_raw
from tests.support.upstream import RecordedRequest, Reply, echo_sha256

REQUEST_ID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}")


def one_request(
    mesh: MeshPair,
    method: str = "GET",
    target: str = "/",
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
) -> tuple[int, list[tuple[str, str]], bytes, RecordedRequest]:
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.request(method, target, headers or [], body)
        response = conn.read_response(method)
    (seen,) = mesh.upstream.requests
    return response.status, response.headers, response.body, seen


# -- bodyless responses and requests (row 43) --------------------------------------------------


def test_head_response_keeps_content_length_and_sends_no_body(mesh: MeshPair) -> None:
    def handler(req: RecordedRequest) -> Reply:
        if req.method == "HEAD":
            return Reply(headers=[("Content-Length", "1234"), ("ETag", '"h1"')], framing="none")
        return echo_sha256(req)

    mesh.upstream.handler = handler
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        # Pipelined: any body bytes after the HEAD answer would corrupt the next response.
        conn.request("HEAD", "/resource")
        conn.request("GET", "/next")
        head = conn.read_response("HEAD")
        following = conn.read_response("GET")
    assert head.status == 200
    assert head.get_all("content-length") == ["1234"]
    assert head.get("etag") == '"h1"'
    assert head.get("transfer-encoding") is None
    assert head.body_size == 0
    assert (following.status, following.get("x-echo-target")) == (200, "/next")


def test_204_has_no_body_and_the_connection_stays_usable(mesh: MeshPair) -> None:
    mesh.upstream.handler = lambda req: (
        Reply(status=204, headers=[("X-Kind", "empty")])
        if req.target == "/nc"
        else echo_sha256(req)
    )
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.request("DELETE", "/nc")
        conn.request("GET", "/next")
        first = conn.read_response("DELETE")
        following = conn.read_response()
    assert (first.status, first.get("x-kind"), first.body_size) == (204, "empty", 0)
    assert first.get("transfer-encoding") is None
    assert first.get("content-length") in (None, "0")
    assert (following.status, following.get("x-echo-target")) == (200, "/next")


def test_304_keeps_validators_and_has_no_body(mesh: MeshPair) -> None:
    mesh.upstream.handler = lambda req: (
        Reply(status=304, headers=[("ETag", '"v7"'), ("Content-Length", "5000")], framing="none")
        if req.target == "/cached"
        else echo_sha256(req)
    )
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.request("GET", "/cached", [("If-None-Match", '"v7"')])
        conn.request("GET", "/next")
        first = conn.read_response()
        following = conn.read_response()
    assert (first.status, first.get("etag"), first.body_size) == (304, '"v7"', 0)
    assert first.get("transfer-encoding") is None
    assert mesh.upstream.requests[0].header_all("if-none-match") == ['"v7"']
    assert (following.status, following.get("x-echo-target")) == (200, "/next")


def test_content_length_zero_request_is_kept(mesh: MeshPair) -> None:
    status, _, _, seen = one_request(mesh, "POST", "/cl0", body=b"")
    assert status == 200
    assert seen.header_all("content-length") == ["0"]
    assert seen.header("transfer-encoding") is None
    assert seen.body_size == 0


def test_bodyless_post_gets_no_transfer_encoding(mesh: MeshPair) -> None:
    status, _, _, seen = one_request(mesh, "POST", "/nobody")
    assert status == 200
    assert seen.header("transfer-encoding") is None
    assert seen.header_all("content-length") in ([], ["0"])
    assert seen.body_size == 0


def test_get_gets_no_framing_headers(mesh: MeshPair) -> None:
    status, _, _, seen = one_request(mesh, "GET", "/plain")
    assert status == 200
    assert seen.header("transfer-encoding") is None
    assert seen.header_all("content-length") in ([], ["0"])


def test_content_length_zero_response_is_kept(mesh: MeshPair) -> None:
    mesh.upstream.handler = lambda req: Reply(body=b"")
    status, headers, body, _ = one_request(mesh)
    assert (status, body) == (200, b"")
    assert [v for n, v in headers if n == "content-length"] == ["0"]
    assert not [n for n, _ in headers if n == "transfer-encoding"]


def test_close_delimited_upstream_response_arrives_complete(mesh: MeshPair) -> None:
    data = bytes(range(256)) * 400 + b"tail"
    mesh.upstream.handler = lambda req: (
        Reply(body=[data[:1000], data[1000:]], framing="close")
        if req.target == "/close-delimited"
        else echo_sha256(req)
    )
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.request("GET", "/close-delimited")
        response = conn.read_response()
        assert response.status == 200
        assert response.body_sha256 == hashlib.sha256(data).hexdigest()
        assert response.body_size == len(data)
        # The upstream's close ended only its own connection; this one still works.
        conn.request("GET", "/again")
        again = conn.read_response()
    assert (again.status, again.get("x-echo-target")) == (200, "/again")


@pytest.mark.parametrize(
    "keep_alive",
    [b"", b"Connection: keep-alive\r\n", b"Proxy-Connection: keep-alive\r\n"],
    ids=["plain", "connection-keep-alive", "proxy-connection-keep-alive"],
)
def test_http10_client_gets_no_chunked_response(mesh: MeshPair, keep_alive: bytes) -> None:
    """Also when it asks to keep the connection: it is still an HTTP/1.0 client."""
    data = b"a" * 3000 + b"b" * 3000
    mesh.upstream.handler = lambda req: Reply(body=[data[:3000], data[3000:]], framing="chunked")
    raw = b"GET /old HTTP/1.0\r\nHost: app\r\n" + keep_alive + b"\r\n"
    result = send_raw(mesh.outbound_port, raw, timeout=5)
    head = parse_head(result.data)
    assert head.status == 200
    assert head.get("transfer-encoding") is None
    assert head.rest == data
    assert result.closed
    if head.get("content-length") is not None:
        assert head.get("content-length") == str(len(data))


def test_expect_100_continue_is_answered_before_the_body(mesh: MeshPair) -> None:
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.send(
            b"POST /expect HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\n\r\n"
        )
        conn.sock.settimeout(5)
        interim = conn.sock.recv(1000)
        assert parse_head(interim).status == 100
        conn.send(b"hello")
        response = conn.read_response()
    assert (response.status, response.get("x-echo-body-size")) == (200, "5")
    (seen,) = mesh.upstream.requests
    assert seen.body == b"hello"


# -- hop-by-hop headers (row 7) ----------------------------------------------------------------

HOP_BY_HOP = {
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "http2-settings",
}


def connection_tokens(headers: list[tuple[str, str]]) -> set[str]:
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }


def test_hop_by_hop_request_headers_are_not_forwarded(mesh: MeshPair) -> None:
    status, _, _, seen = one_request(
        mesh,
        headers=[
            ("Connection", "keep-alive, X-Foo, x-bar"),
            ("X-Foo", "must-not-pass"),
            ("X-Bar", "must-not-pass"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "gzip"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "h2c"),
            ("Proxy-Authorization", "Basic c2VjcmV0OnNlY3JldA=="),
            ("X-End-To-End", "kept"),
        ],
    )
    assert status == 200
    names = seen.header_names()
    assert not names & (HOP_BY_HOP | {"x-foo", "x-bar"}), seen.headers
    assert connection_tokens(seen.headers) <= {"close", "keep-alive"}
    assert seen.header_all("x-end-to-end") == ["kept"]
    assert b"must-not-pass" not in mesh.upstream.raw_received()
    assert b"c2VjcmV0" not in mesh.upstream.raw_received()


UPGRADES = {
    "h2c": [
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    ],
    # WebSocket upgrades are carried as tunnels (tests/protocols/test_websocket.py).
    "tls": [
        ("Connection", "Upgrade"),
        ("Upgrade", "TLS/1.0"),
    ],
}


@pytest.mark.parametrize("kind", sorted(UPGRADES))
def test_upgrade_is_stripped_and_answered_as_http11(mesh: MeshPair, kind: str) -> None:
    with HttpConnection(mesh.outbound_port, timeout=3) as conn:
        conn.request("GET", "/upgrade", UPGRADES[kind])
        first = conn.read_response()
        conn.request("GET", "/after-upgrade")
        second = conn.read_response()
    assert (first.status, second.status) == (200, 200)
    assert second.get("x-echo-target") == "/after-upgrade"
    seen = mesh.upstream.requests[0]
    assert not seen.header_names() & {"upgrade", "http2-settings"}
    assert connection_tokens(seen.headers) <= {"close", "keep-alive"}


def test_hop_by_hop_response_headers_are_not_forwarded(mesh: MeshPair) -> None:
    mesh.upstream.handler = lambda req: Reply(
        headers=[
            ("Connection", "close, x-server-quux"),
            ("X-Server-Quux", "must-not-pass"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authenticate", "Basic"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "foo/2"),
            ("X-End-To-End", "kept"),
        ],
        body=b"hello",
        close=True,
    )
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.request("GET", "/hop")
        response = conn.read_response()
        assert (response.status, response.body) == (200, b"hello")
        names = {n for n, _ in response.headers}
        assert "x-server-quux" not in names
        assert not names & HOP_BY_HOP
        assert "x-server-quux" not in connection_tokens(response.headers)
        assert response.get("x-end-to-end") == "kept"
        # The upstream's `Connection: close` concerned its own hop only.
        mesh.upstream.reset()
        conn.request("GET", "/still-open")
        again = conn.read_response()
    assert (again.status, again.get("x-echo-target")) == (200, "/still-open")


def test_each_header_is_treated_by_its_name_when_a_peer_reorders_them(mesh: MeshPair) -> None:
    # Each connection remembers the previous message's header names by position (peers
    # repeat their order); here the second message of each connection swaps the roles of
    # its first headers, in both directions.
    def handler(req: RecordedRequest) -> Reply:
        if req.target == "/first":
            headers = [("X-Gone", "1"), ("Connection", "x-gone"), ("X-Kept", "a")]
            return Reply(headers=headers, body=b"one")
        headers = [("Connection", "x-kept"), ("X-Gone", "2"), ("X-Kept", "b")]
        return Reply(headers=headers, body=b"two")

    mesh.upstream.handler = handler
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.request("GET", "/first", [("X-Gone", "1"), ("Connection", "x-gone"), ("X-Kept", "a")])
        first = conn.read_response()
        conn.request("GET", "/second", [("Connection", "x-kept"), ("X-Gone", "2"), ("X-Kept", "b")])
        second = conn.read_response()
    one, two = mesh.upstream.requests
    assert one.conn_id == two.conn_id
    assert (one.header_all("x-gone"), one.header_all("x-kept")) == ([], ["a"])
    assert (two.header_all("x-gone"), two.header_all("x-kept")) == (["2"], [])
    assert (first.get("x-gone"), first.get("x-kept"), first.body) == (None, "a", b"one")
    assert (second.get("x-gone"), second.get("x-kept"), second.body) == ("2", None, b"two")


# -- forwarding headers (row 28) and request ids -----------------------------------------------


def test_request_id_is_generated_when_absent(mesh: MeshPair) -> None:
    ids = []
    for i in range(3):
        mesh.upstream.reset()
        _, _, _, seen = one_request(mesh, target=f"/rid/{i}")
        values = seen.header_all("x-request-id")
        assert len(values) == 1, seen.headers
        assert REQUEST_ID.fullmatch(values[0]), values[0]
        ids.append(values[0])
    assert len(set(ids)) == 3
    # The id the outbound sidecar made is the one the inbound sidecar kept.
    wait_until(
        lambda: ids[-1] in {r["request_id"] for r in mesh.outbound.access_log()},
        5,
        "the outbound access log to show the generated id",
    )


def test_request_id_is_kept_when_present(mesh: MeshPair) -> None:
    _, _, _, seen = one_request(mesh, headers=[("X-Request-Id", "caller-chose-this-1")])
    assert seen.header_all("x-request-id") == ["caller-chose-this-1"]


def test_x_forwarded_for_appends_the_real_peer_at_each_hop(mesh: MeshPair) -> None:
    _, _, _, seen = one_request(mesh, headers=[("X-Forwarded-For", "203.0.113.7")])
    (value,) = seen.header_all("x-forwarded-for")
    assert [v.strip() for v in value.split(",")] == ["203.0.113.7", "127.0.0.1", "127.0.0.1"]


def test_x_forwarded_for_from_two_client_lines_is_combined(mesh: MeshPair) -> None:
    _, _, _, seen = one_request(
        mesh, headers=[("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "198.51.100.2")]
    )
    (value,) = seen.header_all("x-forwarded-for")
    assert [v.strip() for v in value.split(",")] == [
        "203.0.113.7",
        "198.51.100.2",
        "127.0.0.1",
        "127.0.0.1",
    ]


def test_x_forwarded_for_without_client_value(mesh: MeshPair) -> None:
    _, _, _, seen = one_request(mesh)
    assert seen.header_all("x-forwarded-for") == ["127.0.0.1, 127.0.0.1"]


def test_x_forwarded_proto_is_set_by_the_proxy(mesh: MeshPair) -> None:
    _, _, _, seen = one_request(mesh, headers=[("X-Forwarded-Proto", "https")])
    assert seen.header_all("x-forwarded-proto") == ["http"]


# -- connection reuse --------------------------------------------------------------------------


def test_sequential_requests_share_one_upstream_connection(mesh: MeshPair) -> None:
    accepted_before = mesh.inbound.admin("/listeners")["inbound"]["accepted"]
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        for i in range(20):
            body = b"x" * i if i % 2 else None
            conn.request("POST" if body else "GET", f"/seq/{i}", body=body)
            assert conn.read_response().status == 200
    requests = mesh.upstream.requests
    assert [r.target for r in requests] == [f"/seq/{i}" for i in range(20)]
    assert len({r.conn_id for r in requests}) == 1
    assert mesh.upstream.connections_opened <= 1
    # Between the two sidecars too: at most one new connection for all twenty.
    accepted_after = mesh.inbound.admin("/listeners")["inbound"]["accepted"]
    assert accepted_after - accepted_before <= 1
