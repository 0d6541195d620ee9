"""Property tests of request framing through the parser and forwarder (RELIABILITY row 11).

The in-process harness (`fuzz.forward_harness`) runs a real `ServerConnection`; hypothesis
writes the clients:

- well-formed pipelines of 1-3 requests, with Content-Length or chunked bodies (random chunk
  sizes, extensions, trailers), split into random reads: each request is forwarded once,
  canonically, with its body intact, and the split never changes what is forwarded;
- the same messages with random byte-level mutations from a smuggling alphabet: whatever
  the proxy does, the invariants hold (never two messages out of one, the re-parse equals
  the parse, never CL+TE, refusals end the connection).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.forward_harness import Outcome, check

pytestmark = pytest.mark.timeout(120)

TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-!#$%&'*+.^`|~", min_size=1, max_size=12)
VALUE = st.binary(min_size=0, max_size=24).map(
    lambda b: bytes(c for c in b if 0x20 <= c <= 0x7E or c >= 0x80).strip(b" \t")
)
PATH = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~%/=&", max_size=20).map(lambda p: "/" + p)
RESERVED = {"host", "content-length", "transfer-encoding", "connection", "keep-alive",
            "proxy-connection", "te", "trailer", "upgrade", "proxy-authorization",
            "proxy-authenticate", "x-forwarded-for", "x-forwarded-proto", "x-request-id",
            "expect", "x-forwarded-client-cert", "l5d-client-id"}  # fmt: skip


@dataclass
class Message:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes | None
    chunked: bool
    wire: bytes


@st.composite
def messages(draw: st.DrawFn) -> Message:
    # llhttp knows the registered methods only; an unknown one is refused (400).
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]))
    target = draw(PATH).encode()
    names = draw(st.lists(TOKEN.filter(lambda n: n not in RESERVED and "_" not in n), max_size=6))
    headers = [(n.encode(), draw(VALUE)) for n in names]
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    body = draw(st.binary(max_size=300)) if framing != "none" else None
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: app"]
    lines += [n.title() + b": " + v for n, v in headers]
    tail = b""
    if framing == "length":
        assert body is not None
        lines.append(b"Content-Length: %d" % len(body))
        tail = body
    elif framing == "chunked":
        assert body is not None
        lines.append(b"Transfer-Encoding: chunked")
        sizes = draw(st.lists(st.integers(1, 64), max_size=8))
        pos, parts = 0, []
        for size in [*sizes, len(body)]:
            piece = body[pos : pos + size]
            pos += len(piece)
            if piece:
                ext = draw(st.sampled_from([b"", b";a=b", b';q="x y"']))
                parts.append(b"%x%s\r\n%s\r\n" % (len(piece), ext, piece))
        trailer = draw(st.sampled_from([b"", b"X-Sum: 1\r\n"]))
        tail = b"".join(parts) + b"0\r\n" + trailer + b"\r\n"
    wire = b"".join(line + b"\r\n" for line in lines) + b"\r\n" + tail
    return Message(method, target, headers, body, framing == "chunked", wire)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def decoded(outcome: Outcome) -> list[tuple[object, ...]]:
    return [
        (f.request.method, f.request.target, f.request.headers, f.body, f.complete)
        for f in outcome.forwarded
    ]


props = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@props
@given(st.lists(messages(), min_size=1, max_size=3), st.lists(st.integers(0, 4096), max_size=6))
def test_well_formed_pipelines_forward_each_message_once(
    pipeline: list[Message], cuts: list[int]
) -> None:
    data = b"".join(m.wire for m in pipeline)
    whole = check(data)
    assert len(whole.forwarded) == len(pipeline)
    for message, item in zip(pipeline, whole.forwarded, strict=True):
        assert item.complete
        assert (item.request.method, item.request.target) == (message.method, message.target)
        assert item.request.headers == message.headers
        assert item.body == (message.body or b"")
        head = item.wire.split(b"\r\n\r\n", 1)[0]
        assert b";" not in item.wire[len(head) :].split(b"\r\n", 1)[0]  # extensions dropped
        assert b"x-sum" not in head  # trailers never become headers
    assert whole.replies.count(b"HTTP/1.1 200 OK") == len(pipeline)
    # However the bytes are split into reads, the same messages are forwarded.
    assert decoded(check(data, split(data, cuts))) == decoded(whole)


ALPHABET = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b",", b";", b"0", b"-", b"+", b"x",
            b"\x00", b"\x0b", b"\x7f", b"\xff", b"chunked", b"Transfer-Encoding: chunked\r\n",
            b"Content-Length: 3\r\n", b"Host: b\r\n", b"GET / HTTP/1.1\r\n",
            b"ffffffffffffffff"]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(b"".join(m.wire for m in draw(st.lists(messages(), min_size=1, max_size=2))))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "replace", "delete"]))
        piece = draw(st.sampled_from(ALPHABET))
        if op == "insert":
            data[pos:pos] = piece
        elif op == "replace":
            data[pos : pos + len(piece)] = piece
        else:
            del data[pos : pos + draw(st.integers(1, 4))]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.lists(st.integers(0, 4096), max_size=4))
def test_mutated_messages_keep_the_invariants(data: bytes, cuts: list[int]) -> None:
    check(data)
    check(data, split(data, cuts))
