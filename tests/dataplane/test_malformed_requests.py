"""Malformed and smuggling-shaped requests (RELIABILITY section A, rows 1-9).

Each bad request is written as raw bytes to the outbound listener of a sidecar pair (and a
few to the inbound listener). The proxy must answer it itself (400, 431 or 501, with
`x-mesh-error` naming the reason), close the connection, and forward nothing: the recording
upstream must see zero bytes. Rows 8 and 9 also cover what must be forwarded: an
absolute-form target's authority wins over Host, pipelined requests are answered in order,
and surplus responses from an upstream never reach a client.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.dataplane.conftest import MeshPair, assert_nothing_forwarded
from tests.support.processes import wait_until
from tests.support.rawclient import HttpConnection, parse_head, send_raw
from tests.support.upstream import Reply

# The x-mesh-error word for each status the proxy may answer a bad request with; a status
# without a word here (414, 505) must still carry some x-mesh-error.
REASONS = {
    400: "bad-request",
    431: "headers-too-large",
    501: "not-implemented",
}

# A body that is a complete chunked message followed by a second request: whichever framing
# a confused hop picks, a smuggled GET /smuggled would surface at the upstream.
SMUGGLE = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n"


def request(*headers: bytes, body: bytes = b"", line: bytes = b"POST / HTTP/1.1") -> bytes:
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def cl(n: int | None = None) -> bytes:
    return b"Content-Length: %d" % (len(SMUGGLE) if n is None else n)


TE = b"Transfer-Encoding: chunked"
HOST = b"Host: app"

ROW1 = [
    pytest.param(request(HOST, cl(), TE, body=SMUGGLE), {400}, id="cl-then-te"),
    pytest.param(request(HOST, TE, cl(), body=SMUGGLE), {400}, id="te-then-cl"),
    pytest.param(
        request(HOST, cl(), b"\tTransfer-Encoding: chunked", body=SMUGGLE),
        {400},
        id="tab-te-folded-into-cl",
    ),
    pytest.param(
        request(b"\tTransfer-Encoding: chunked", HOST, cl(), body=SMUGGLE),
        {400},
        id="tab-te-first-line",
    ),
    pytest.param(
        request(HOST, b"Transfer-Encoding: identity, chunked", cl(), body=SMUGGLE),
        {400, 501},
        id="identity-chunked-with-cl",
    ),
    pytest.param(
        request(HOST, b"Transfer-Encoding: identity", TE, cl(), body=SMUGGLE),
        {400, 501},
        id="te-split-over-two-lines",
    ),
    pytest.param(
        request(HOST, b"Transfer-Encoding:", b" chunked", cl(), body=SMUGGLE),
        {400, 501},
        id="te-value-folded-onto-next-line",
    ),
]

ROW2 = [
    pytest.param(request(HOST, b"Content-Length: " + value, body=b"hello"), {400}, id=ident)
    for ident, value in [
        ("comma-list", b"3,2"),
        ("comma-list-spaced", b"5, 6"),
        ("plus-sign", b"+5"),
        ("hex", b"0x5"),
        ("negative", b"-1"),
        ("empty", b""),
        ("two-numbers", b"5 5"),
        ("exponent", b"5e0"),
        ("overflow", b"99999999999999999999999"),
        ("trailing-letter", b"5a"),
    ]
] + [
    pytest.param(request(HOST, cl(5), cl(6), body=b"hello!"), {400}, id="two-differing-headers"),
]

# RELIABILITY row 3: bytes before, after and inside the Transfer-Encoding name and value,
# each as CL.TE, TE.CL and TE alone (smuggler's mutation families, re-implemented).
_OBFUSCATING_BYTES = [0x01, 0x09, 0x0B, 0x0D, 0x7F, 0xA0, 0xFF]
_POSITIONS = {
    "name-prefix": lambda b: b + b"Transfer-Encoding: chunked",
    "name-suffix": lambda b: b"Transfer-Encoding" + b + b": chunked",
    "name-inside": lambda b: b"Transfer" + b + b"-Encoding: chunked",
    "value-prefix": lambda b: b"Transfer-Encoding: " + b + b"chunked",
    "value-suffix": lambda b: b"Transfer-Encoding: chunked" + b,
    "value-inside": lambda b: b"Transfer-Encoding: chu" + b + b"nked",
}


def _row3() -> list[Any]:
    params: list[Any] = []
    for byte in _OBFUSCATING_BYTES:
        for where, mutate in _POSITIONS.items():
            te = mutate(bytes([byte]))
            ident = f"{where}-{byte:02x}"
            params.append(
                pytest.param(request(HOST, cl(), te, body=SMUGGLE), {400, 501}, id=f"cl-te-{ident}")
            )
            params.append(
                pytest.param(request(HOST, te, cl(), body=SMUGGLE), {400, 501}, id=f"te-cl-{ident}")
            )
            # Alone, a tab around the value is optional whitespace: a valid chunked request.
            if not (byte == 0x09 and where.startswith("value-") and where != "value-inside"):
                params.append(
                    pytest.param(request(HOST, te, body=SMUGGLE), {400, 501}, id=f"te-only-{ident}")
                )
    extras = {
        "xchunked": [b"Transfer-Encoding: xchunked"],
        "chunked-twice-in-one-value": [b"Transfer-Encoding: chunked, chunked"],
        "chunked-twice-as-two-headers": [TE, TE],
        "chunked-then-identity": [b"Transfer-Encoding: chunked, identity"],
        "quoted-chunked": [b'Transfer-Encoding: "chunked"'],
        "space-before-colon": [b"Transfer-Encoding : chunked"],
        "underscore-name": [b"Transfer_Encoding: chunked"],
        "chunked-with-parameter": [b"Transfer-Encoding: chunked;q=1"],
        "gzip-chunked": [b"Transfer-Encoding: gzip, chunked"],
    }
    for ident, headers in extras.items():
        params.append(
            pytest.param(
                request(HOST, cl(), *headers, body=SMUGGLE), {400, 501}, id=f"cl-te-{ident}"
            )
        )
        params.append(
            pytest.param(request(HOST, *headers, body=SMUGGLE), {400, 501}, id=f"te-only-{ident}")
        )
    return params


ROW3 = _row3()

_VERSION_STATUSES = {400, 505}
ROW4 = [
    pytest.param(request(HOST, b"X-A: a\x00b", line=b"GET / HTTP/1.1"), {400}, id="nul-in-value"),
    pytest.param(request(HOST, b"X-A: a\rb", line=b"GET / HTTP/1.1"), {400}, id="cr-in-value"),
    pytest.param(request(HOST, b"X-A: a\nb", line=b"GET / HTTP/1.1"), {400}, id="lf-in-value"),
    pytest.param(request(HOST, b"X(A): 1", line=b"GET / HTTP/1.1"), {400}, id="paren-in-name"),
    pytest.param(request(HOST, b"X\x7fA: 1", line=b"GET / HTTP/1.1"), {400}, id="del-in-name"),
    pytest.param(request(HOST, b"XA 1", line=b"GET / HTTP/1.1"), {400}, id="no-colon"),
    pytest.param(request(HOST, b"X-A : 1", line=b"GET / HTTP/1.1"), {400}, id="space-before-colon"),
    pytest.param(request(HOST, b": 1", line=b"GET / HTTP/1.1"), {400}, id="empty-name"),
    pytest.param(
        request(HOST, b"X_Mesh_Id: 1", line=b"GET / HTTP/1.1"), {400}, id="underscore-in-name"
    ),
    pytest.param(
        request(b" Host: app", line=b"GET / HTTP/1.1"), {400}, id="whitespace-before-first-header"
    ),
    pytest.param(b"GET / HTTP/1.1\nHost: app\n\n", {400}, id="bare-lf-lines"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: app\n\r\n", {400}, id="bare-lf-after-header"),
    pytest.param(request(HOST, line=b"GE(T / HTTP/1.1"), {400}, id="bad-method-token"),
    pytest.param(request(HOST, line=b"GET / HTTP/1.01"), _VERSION_STATUSES, id="version-1.01"),
    pytest.param(request(HOST, line=b"GET / HTTP/1.2"), _VERSION_STATUSES, id="version-1.2"),
    pytest.param(request(HOST, line=b"GET / HTTP/2.0"), _VERSION_STATUSES, id="version-2.0"),
    pytest.param(request(HOST, line=b"GET / HTTP/0.9"), _VERSION_STATUSES, id="version-0.9"),
    pytest.param(request(HOST, line=b"GET / http/1.1"), _VERSION_STATUSES, id="version-lower"),
    pytest.param(request(HOST, line=b"GET / HTTP/1.1 "), _VERSION_STATUSES, id="version-trail"),
    pytest.param(b"GET /\r\n\r\n", {400}, id="http-0.9-request"),
]

ROW6 = [
    pytest.param(
        request(HOST, *[b"X-H%d: %d" % (i, i) for i in range(101)], line=b"GET / HTTP/1.1"),
        {431},
        id="101-headers",
    ),
    pytest.param(
        request(HOST, b"X-Big: " + b"a" * (60 * 1024), line=b"GET / HTTP/1.1"),
        {431},
        id="one-60KiB-header",
    ),
    pytest.param(
        request(HOST, b"X-Big: " + b"a" * (70 * 1024), line=b"GET / HTTP/1.1"),
        {431},
        id="one-70KiB-header",
    ),
    pytest.param(
        request(HOST, line=b"GET /" + b"u" * (95 * 1024) + b" HTTP/1.1"),
        {400, 414, 431},
        id="95KiB-url",
    ),
]

ROW8 = [
    pytest.param(request(line=b"GET / HTTP/1.1"), {400}, id="no-host"),
    pytest.param(request(HOST, HOST, line=b"GET / HTTP/1.1"), {400}, id="two-hosts"),
    pytest.param(
        request(HOST, b"Host: other", line=b"GET / HTTP/1.1"), {400}, id="two-different-hosts"
    ),
    pytest.param(request(b"Host: a@b", line=b"GET / HTTP/1.1"), {400}, id="host-userinfo"),
    pytest.param(request(b"Host: a b", line=b"GET / HTTP/1.1"), {400}, id="host-space"),
    pytest.param(request(b"Host: app:x", line=b"GET / HTTP/1.1"), {400}, id="host-bad-port"),
    pytest.param(
        request(HOST, line=b"GET http://u@app/ HTTP/1.1"), {400}, id="absolute-form-userinfo"
    ),
    pytest.param(
        request(HOST, line=b"GET ftp://app/ HTTP/1.1"), {400}, id="absolute-form-other-scheme"
    ),
    pytest.param(request(HOST, line=b"GET /x#frag HTTP/1.1"), {400}, id="fragment-in-target"),
    pytest.param(request(HOST, line=b"GET * HTTP/1.1"), {400}, id="asterisk-for-get"),
    pytest.param(request(HOST, line=b"CONNECT * HTTP/1.1"), {400, 501}, id="connect-asterisk"),
    pytest.param(
        request(HOST, line=b"CONNECT / HTTP/1.1"),
        {400, 501},
        id="connect-slash",
    ),
    pytest.param(
        request(HOST, line=b"CONNECT /x HTTP/1.1"),
        {400, 501},
        id="connect-origin-form",
    ),
    pytest.param(
        request(HOST, line=b"CONNECT app:80 HTTP/1.1"),
        {400, 501},
        id="connect-authority-form-not-carried",
    ),
]

REFUSED = ROW1 + ROW2 + ROW3 + ROW4 + ROW6 + ROW8

# RELIABILITY row 5: chunked framing errors in the body.
ROW5 = [
    pytest.param(b"0x5\r\nhello\r\n0\r\n\r\n", id="size-0x-prefix"),
    pytest.param(b"+5\r\nhello\r\n0\r\n\r\n", id="size-plus-sign"),
    pytest.param(b"-5\r\nhello\r\n0\r\n\r\n", id="size-negative"),
    pytest.param(b"zz\r\nhello\r\n0\r\n\r\n", id="size-not-hex"),
    pytest.param(b"10000000000000005\r\nhello\r\n0\r\n\r\n", id="size-17-hex-digits"),
    pytest.param(b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n", id="size-overflow"),
    pytest.param(b"5\nhello\n0\n\n", id="bare-lf-chunk-lines"),
    pytest.param(b"5;a=\rb\r\nhello\r\n0\r\n\r\n", id="cr-in-chunk-extension"),
    pytest.param(b"3\r\nhello\r\n0\r\n\r\n", id="data-longer-than-size"),
    pytest.param(b"5\r\nhelloXX0\r\n\r\n", id="no-crlf-after-data"),
    pytest.param(b"5\r\nhello\r\n0\r\nX-A\r\n\r\n", id="trailer-without-colon"),
    pytest.param(b"5\r\nhello\r\n0\r\nX-A: a\x00b\r\n\r\n", id="trailer-with-nul"),
]


def check_refused(data: bytes, closed: bool, statuses: set[int]) -> None:
    assert data, "the proxy closed without answering"
    head = parse_head(data)
    assert head.status in statuses, data[:400]
    reason = head.get("x-mesh-error")
    assert reason and reason == REASONS.get(head.status, reason), data[:400]
    assert head.rest.count(b"\n") == 1 and head.rest.endswith(b"\n"), head.rest
    assert closed, "the connection was left open after a refused request"


@pytest.mark.parametrize(("payload", "statuses"), REFUSED)
def test_refused_on_outbound_nothing_forwarded(
    mesh: MeshPair, payload: bytes, statuses: set[int]
) -> None:
    result = send_raw(mesh.outbound_port, payload, timeout=3)
    check_refused(result.data, result.closed, statuses)
    assert_nothing_forwarded(mesh.upstream, mesh.outbound_port)


INBOUND_IDS = {
    "cl-then-te",
    "te-then-cl",
    "two-differing-headers",
    "plus-sign",
    "cl-te-value-suffix-a0",
    "te-only-name-suffix-0b",
    "nul-in-value",
    "bare-lf-lines",
    "version-2.0",
    "101-headers",
    "one-70KiB-header",
    "no-host",
    "two-hosts",
    "host-userinfo",
}
INBOUND_SAMPLE = [param for param in REFUSED if param.id in INBOUND_IDS]
assert len(INBOUND_SAMPLE) == len(INBOUND_IDS), "an inbound sample id names no case"


@pytest.mark.parametrize(("payload", "statuses"), INBOUND_SAMPLE)
def test_refused_on_inbound_nothing_forwarded(
    mesh: MeshPair, payload: bytes, statuses: set[int]
) -> None:
    result = send_raw(mesh.inbound_port, payload, timeout=3)
    check_refused(result.data, result.closed, statuses)
    assert_nothing_forwarded(mesh.upstream, mesh.inbound_port)


@pytest.mark.parametrize("body", ROW5)
def test_bad_chunked_body_never_completes_upstream(mesh: MeshPair, body: bytes) -> None:
    """Whatever reached the upstream, it never saw a complete request built from bad framing."""
    result = send_raw(mesh.outbound_port, request(HOST, TE, body=body), timeout=3)
    assert result.closed
    if result.data:
        assert parse_head(result.data).status >= 400, result.data[:300]
    wait_until(
        lambda: all(c.closed.is_set() for c in mesh.upstream.connections_used()),
        5,
        "the upstream connection that carried the bad body to be dropped",
    )
    assert mesh.upstream.requests == []


@pytest.mark.parametrize("body", ROW5)
def test_bad_chunked_body_is_400_with_nothing_forwarded(mesh: MeshPair, body: bytes) -> None:
    result = send_raw(mesh.outbound_port, request(HOST, TE, body=body), timeout=3)
    check_refused(result.data, result.closed, {400})
    assert_nothing_forwarded(mesh.upstream, mesh.outbound_port)


def test_bad_chunk_after_forwarding_began_is_400(mesh: MeshPair) -> None:
    """The body goes bad after the head and a first chunk were already forwarded."""
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.send(request(HOST, TE, body=b"5\r\nhello\r\n", line=b"POST /late-bad HTTP/1.1"))
        wait_until(
            lambda: b"5\r\nhello\r\n" in mesh.upstream.raw_received(),
            5,
            "the first chunk to reach the upstream",
        )
        conn.send(b"zz\r\nnot-a-chunk\r\n0\r\n\r\n")
        response = conn.read_response()
        assert conn.closed_by_peer(5)
    (upstream_conn,) = mesh.upstream.connections_used()
    wait_until(upstream_conn.closed.is_set, 5, "the upstream connection to be dropped")
    assert mesh.upstream.requests == []
    assert (response.status, response.get("x-mesh-error")) == (400, "bad-request")


def test_obs_fold_is_refused_or_unfolded(mesh: MeshPair) -> None:
    """RELIABILITY row 4 allows either answer; the folded line never travels as-is."""
    payload = request(HOST, b"X-A: 1", b" 2", b"Connection: close", line=b"GET / HTTP/1.1")
    result = send_raw(mesh.outbound_port, payload, timeout=3)
    head = parse_head(result.data)
    if head.status == 400:
        assert_nothing_forwarded(mesh.upstream, mesh.outbound_port)
    else:
        assert head.status == 200
        assert mesh.upstream.requests[0].header_all("x-a") == ["1 2"]
        assert b"\r\n 2" not in mesh.upstream.raw_received()


# -- row 8: what an absolute-form target does ---------------------------------------------------


def test_absolute_form_authority_wins_over_host(mesh: MeshPair) -> None:
    payload = request(
        b"Host: elsewhere.example", b"Connection: close", line=b"GET http://app/abs?q=1 HTTP/1.1"
    )
    result = send_raw(mesh.outbound_port, payload, timeout=3)
    assert parse_head(result.data).status == 200, result.data[:300]
    (seen,) = mesh.upstream.requests
    assert seen.target == "/abs?q=1"
    assert seen.header_all("host") == ["app"]
    assert b"elsewhere" not in mesh.upstream.raw_received()


def test_absolute_form_with_port_rewrites_host(mesh: MeshPair) -> None:
    payload = request(b"Host: app", b"Connection: close", line=b"GET http://app:8080/p HTTP/1.1")
    result = send_raw(mesh.outbound_port, payload, timeout=3)
    assert parse_head(result.data).status == 200, result.data[:300]
    (seen,) = mesh.upstream.requests
    assert seen.target == "/p"
    assert seen.header_all("host") == ["app:8080"]


# -- row 9: pipelining, and surplus upstream responses -------------------------------------------


def test_pipelined_requests_answered_in_order(mesh: MeshPair) -> None:
    payload = (
        request(HOST, line=b"GET /first HTTP/1.1")
        + request(HOST, b"Content-Length: 6", body=b"second", line=b"POST /second HTTP/1.1")
        + request(HOST, b"Connection: close", line=b"GET /third HTTP/1.1")
    )
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.send(payload)
        responses = [conn.read_response() for _ in range(3)]
        assert conn.closed_by_peer(5)
    assert [r.status for r in responses] == [200, 200, 200]
    assert [r.get("x-echo-target") for r in responses] == ["/first", "/second", "/third"]
    assert [r.get("x-echo-body-size") for r in responses] == ["0", "6", "0"]
    assert [r.target for r in mesh.upstream.requests] == ["/first", "/second", "/third"]


def test_many_pipelined_requests_past_the_queue_limit(mesh: MeshPair) -> None:
    """More requests than `max_pipelined` (16) in one write: all answered, in order."""
    targets = [f"/p{i}" for i in range(50)]
    payload = b"".join(request(HOST, line=f"GET {t} HTTP/1.1".encode()) for t in targets)
    with HttpConnection(mesh.outbound_port, timeout=10) as conn:
        conn.send(payload)
        answered = [conn.read_response().get("x-echo-target") for _ in targets]
    assert answered == targets


def test_nothing_after_connection_close_is_processed(mesh: MeshPair) -> None:
    payload = request(HOST, b"Connection: close", line=b"GET /last HTTP/1.1") + request(
        HOST, line=b"GET /ignored HTTP/1.1"
    )
    result = send_raw(mesh.outbound_port, payload, timeout=3)
    assert result.closed
    assert result.data.count(b"HTTP/1.1 ") == 1
    assert parse_head(result.data).status == 200
    assert [r.target for r in mesh.upstream.requests] == ["/last"]


BAD_AFTER_GOOD = [
    pytest.param(request(b"Host: a@b", line=b"GET /bad HTTP/1.1"), id="bad-host"),
    pytest.param(request(HOST, cl(1), TE, line=b"POST /bad HTTP/1.1"), id="cl-te"),
    pytest.param(request(HOST, b"X-A: a\x00b", line=b"GET /bad HTTP/1.1"), id="nul"),
]


@pytest.mark.parametrize("bad", BAD_AFTER_GOOD)
def test_bad_request_pipelined_behind_a_good_one_stops_there(mesh: MeshPair, bad: bytes) -> None:
    after = request(HOST, line=b"GET /after HTTP/1.1")
    result = send_raw(mesh.outbound_port, request(HOST, line=b"GET /ok HTTP/1.1") + bad + after, 3)
    assert result.closed
    assert parse_head(result.data).status == 200
    assert [r.target for r in mesh.upstream.requests] == ["/ok"]


@pytest.mark.parametrize("bad", BAD_AFTER_GOOD)
def test_bad_request_pipelined_behind_a_good_one_is_answered(mesh: MeshPair, bad: bytes) -> None:
    with HttpConnection(mesh.outbound_port, timeout=3) as conn:
        conn.send(request(HOST, line=b"GET /ok HTTP/1.1") + bad)
        first = conn.read_response()
        second = conn.read_response()
        assert conn.closed_by_peer(3)
    assert first.status == 200
    assert (second.status, second.get("x-mesh-error")) == (400, "bad-request")


def _surplus(bodies: list[bytes]) -> bytes:
    return b"".join(
        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(b), b) for b in bodies
    )


@pytest.mark.parametrize(
    "bodies",
    [
        pytest.param([b"first", b"SURPLUS-2", b"SURPLUS-3"], id="surplus-with-bodies"),
        pytest.param([b"first", b"", b""], id="surplus-without-bodies"),
    ],
)
def test_surplus_upstream_responses_drop_that_connection(
    mesh: MeshPair, bodies: list[bytes]
) -> None:
    upstream = mesh.upstream
    upstream.handler = lambda req: Reply(raw=_surplus(bodies))
    errors_before = _protocol_errors(mesh)
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.request("GET", "/one-request")
        first = conn.read_response()
    assert (first.status, first.body) == (200, b"first")
    (request,) = upstream.requests
    surplus_conn = upstream.connection(request.conn_id)
    wait_until(surplus_conn.closed.is_set, 5, "the proxy to drop the upstream connection")
    assert _protocol_errors(mesh) > errors_before
    upstream.reset()
    # Other clients get their own responses, never the surplus ones.
    for i in range(5):
        with HttpConnection(mesh.outbound_port, timeout=5) as conn:
            conn.request("GET", f"/after-{i}")
            response = conn.read_response()
        assert response.status == 200 and response.get("x-echo-target") == f"/after-{i}"
        assert b"SURPLUS" not in response.body
    assert all(r.conn_id != surplus_conn.id for r in upstream.requests)


def _protocol_errors(mesh: MeshPair) -> int:
    clusters = mesh.inbound.admin("/clusters")
    return sum(e["pool"]["protocol_errors"] for e in clusters["<local app>"]["endpoints"])


def test_late_unsolicited_upstream_bytes_drop_that_connection(mesh: MeshPair) -> None:
    upstream = mesh.upstream
    late = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nSURPLUS"
    upstream.handler = lambda req: Reply(body=b"first", late=(0.2, late))
    errors_before = _protocol_errors(mesh)
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.request("GET", "/late-surplus")
        first = conn.read_response()
    assert (first.status, first.body) == (200, b"first")
    (request,) = upstream.requests
    surplus_conn = upstream.connection(request.conn_id)
    wait_until(surplus_conn.closed.is_set, 5, "the proxy to drop the upstream connection")
    wait_until(lambda: _protocol_errors(mesh) > errors_before, 5, "a counted protocol error")
    upstream.reset()
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.request("GET", "/after-late")
        response = conn.read_response()
    assert (response.status, response.get("x-echo-target")) == (200, "/after-late")
    assert upstream.requests[0].conn_id != surplus_conn.id
