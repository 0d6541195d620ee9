"""Body integrity through the full sidecar pair (RELIABILITY row 42).

Request and response bodies of sizes around the buffer boundaries (0 B to 64 MiB), framed
by Content-Length or chunked with hypothesis-chosen chunk boundaries, and holding every byte
value 0x00-0xff, must arrive with the same sha256 at the other end. The framing the sender
chose is kept: a Content-Length body keeps its length, a chunked one stays chunked.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dataplane.conftest import MeshPair
from tests.support.rawclient import HttpConnection
from tests.support.upstream import Reply, chunks_of

MiB = 1024 * 1024
SIZES = [0, 1, 8191, 8192, 8193, 65535, 65536, 65537, MiB]
BIG = 64 * MiB


@functools.lru_cache(maxsize=16)
def payload(size: int) -> bytes:
    """`size` bytes: every byte value first, then seeded random bytes."""
    head = bytes(range(256))[:size]
    return head + random.Random(size).randbytes(size - len(head))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """Split `data` at the given offsets (duplicates give empty pieces, which are skipped)."""
    edges = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


hypothesis_settings = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
cut_points = st.lists(st.integers(min_value=0, max_value=BIG), max_size=12)


def post(port: int, body: bytes | list[bytes], *, chunked: bool) -> tuple[str, int]:
    """POST `body` through the pair; the echo upstream answers with its sha256."""
    with HttpConnection(port, timeout=30) as conn:
        conn.request("POST", "/echo", body=body, chunked_body=chunked)
        response = conn.read_response()
    assert response.status == 200, response.body[:300]
    return response.body.decode().strip(), int(response.get("x-echo-body-size") or -1)


def check_request_framing(pair: MeshPair, size: int, *, chunked: bool) -> None:
    (seen,) = pair.upstream.requests
    assert seen.body_size == size
    if chunked:
        assert seen.header_all("transfer-encoding") == ["chunked"]
        assert seen.header("content-length") is None
    else:
        assert seen.header_all("content-length") == [str(size)]
        assert seen.header("transfer-encoding") is None


# -- request bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_request_body_with_content_length(mesh: MeshPair, size: int) -> None:
    data = payload(size)
    digest, seen_size = post(mesh.outbound_port, data, chunked=False)
    assert (digest, seen_size) == (sha(data), size)
    check_request_framing(mesh, size, chunked=False)


@pytest.mark.parametrize("size", SIZES)
@hypothesis_settings
@given(points=cut_points)
def test_request_body_chunked(pair: MeshPair, size: int, points: list[int]) -> None:
    pair.upstream.reset()
    data = payload(size)
    digest, seen_size = post(pair.outbound_port, cut(data, points), chunked=True)
    assert (digest, seen_size) == (sha(data), size)
    check_request_framing(pair, size, chunked=True)


@pytest.mark.slow
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_64mib_request_body(mesh: MeshPair, chunked: bool) -> None:
    data = payload(BIG)
    body = list(chunks_of(data, [65536, 1, 1_000_003, 8192])) if chunked else data
    digest, seen_size = post(mesh.outbound_port, body, chunked=chunked)
    assert (digest, seen_size) == (sha(data), BIG)
    check_request_framing(mesh, BIG, chunked=chunked)


# -- response bodies ---------------------------------------------------------------------------


def fetch(port: int) -> tuple[int, str, str]:
    with HttpConnection(port, timeout=30) as conn:
        conn.request("GET", "/download")
        response = conn.read_response(keep_body=0)
        assert response.status == 200
        return response.body_size, response.body_sha256, response.framing


@pytest.mark.parametrize("size", SIZES)
def test_response_body_with_content_length(mesh: MeshPair, size: int) -> None:
    data = payload(size)
    mesh.upstream.handler = lambda req: Reply(body=data)
    assert fetch(mesh.outbound_port) == (size, sha(data), "length")


@pytest.mark.parametrize("size", SIZES)
@hypothesis_settings
@given(points=cut_points)
def test_response_body_chunked(pair: MeshPair, size: int, points: list[int]) -> None:
    pair.upstream.reset()
    data = payload(size)
    pieces = cut(data, points)
    pair.upstream.handler = lambda req: Reply(body=iter(pieces), framing="chunked")
    assert fetch(pair.outbound_port) == (size, sha(data), "chunked")


@pytest.mark.slow
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_64mib_response_body(mesh: MeshPair, framing: str) -> None:
    data = payload(BIG)
    pieces = list(chunks_of(data, [1_000_003, 7, 65536]))
    mesh.upstream.handler = lambda req: Reply(
        body=iter(pieces),
        framing=framing,
        content_length=BIG,
    )
    assert fetch(mesh.outbound_port) == (BIG, sha(data), framing)


def test_request_and_response_bodies_on_one_keep_alive_connection(mesh: MeshPair) -> None:
    """Alternating sizes and framings on one connection: nothing bleeds between messages."""
    with HttpConnection(mesh.outbound_port, timeout=30) as conn:
        for i, size in enumerate(SIZES * 2):
            data = payload(size)
            conn.request("POST", f"/mixed/{i}", body=data, chunked_body=bool(i % 2))
            response = conn.read_response()
            assert response.status == 200
            assert response.get("x-echo-target") == f"/mixed/{i}"
            assert response.body.decode().strip() == sha(data)
