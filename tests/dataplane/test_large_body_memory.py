"""A 1 GiB body crosses the sidecar pair in bounded memory (RELIABILITY rows 15, 42).

The client streams 1 GiB chunked, generated on the fly; the recording upstream hashes it
as it arrives and answers with the sha256, which must match the client's. The same size
then flows back as a response. Each sidecar's peak resident memory (VmHWM) stays under
200 MiB: the proxy streams with flow control instead of buffering.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import pytest

from tests.dataplane.conftest import MeshPair, start_pair
from tests.support.processes import Sidecars, peak_rss_kib
from tests.support.rawclient import HttpConnection
from tests.support.upstream import RecordingUpstream, Reply

MiB = 1024 * 1024
TOTAL = 1024 * MiB
RSS_LIMIT_KIB = 200 * 1024

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def fresh_pair(sidecars: Sidecars) -> Iterator[MeshPair]:
    """A pair of its own, so the peak memory measured is this module's."""
    with RecordingUpstream(raw_limit=0, body_limit=0) as upstream:
        yield start_pair(sidecars, upstream)


def blocks(total: int) -> Iterator[bytes]:
    """`total` bytes in 1 MiB blocks, each different, all byte values present."""
    rng = random.Random(1)
    base = [bytes(range(256)) * 4 + rng.randbytes(MiB - 1024) for _ in range(7)]
    for i in range(total // MiB):
        yield i.to_bytes(8, "big") + base[i % 7][8:]


def check_memory(mesh: MeshPair) -> None:
    for proc in (mesh.outbound, mesh.inbound):
        peak = peak_rss_kib(proc.proc.pid)
        assert peak < RSS_LIMIT_KIB, f"{proc.name} peaked at {peak // 1024} MiB"


def test_1gib_request_body_streams_in_bounded_memory(fresh_pair: MeshPair) -> None:
    digest = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for block in blocks(TOTAL):
            digest.update(block)
            yield block

    with HttpConnection(fresh_pair.outbound_port, timeout=60) as conn:
        conn.request("POST", "/gigabyte", body=body())
        response = conn.read_response()
    assert response.status == 200
    assert response.get("x-echo-body-size") == str(TOTAL)
    assert response.body.decode().strip() == digest.hexdigest()
    check_memory(fresh_pair)


def test_1gib_response_body_streams_in_bounded_memory(fresh_pair: MeshPair) -> None:
    expected = hashlib.sha256()
    for block in blocks(TOTAL):
        expected.update(block)
    fresh_pair.upstream.handler = lambda req: Reply(body=blocks(TOTAL), framing="chunked")
    with HttpConnection(fresh_pair.outbound_port, timeout=60) as conn:
        conn.request("GET", "/gigabyte")
        response = conn.read_response(keep_body=0)
    assert (response.status, response.body_size) == (200, TOTAL)
    assert response.body_sha256 == expected.hexdigest()
    check_memory(fresh_pair)
