"""Compression: gzip (or brotli) for compressible types when the client accepts it, applied
once: never to an already encoded answer, nor to small ones, images or `no-transform`."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import brotli
import pytest

from tests.gateway.conftest import Gateway, catalog_for, start_gateway, stop
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply

pytestmark = pytest.mark.timeout(60)

DOCUMENT = json.dumps([{"id": i, "name": f"product {i}"} for i in range(200)]).encode()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstreams: dict[str, RecordingUpstream]
) -> Iterator[Gateway]:
    log_dir = tmp_path_factory.mktemp("compression")
    config = {
        "catalog": str(catalog_for(log_dir, upstreams)),
        "routes": [
            {"prefix": "/raw", "service": "products", "compress": False},
            {"prefix": "/cached", "service": "products", "cache": True},
            {"prefix": "/", "service": "products"},
        ],
    }
    gateway = start_gateway(log_dir, config)
    yield gateway
    stop(gateway.proc)


def answer(
    upstream: RecordingUpstream,
    body: bytes = DOCUMENT,
    content_type: str = "application/json",
    extra: list[tuple[str, str]] | None = None,
    framing: str = "length",
) -> None:
    def handler(request: RecordedRequest) -> Reply:
        headers = [("Content-Type", content_type), ("ETag", '"v1"'), *(extra or [])]
        if framing == "chunked":
            pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
            return Reply(headers=headers, body=iter(pieces), framing="chunked")
        return Reply(headers=headers, body=body)

    upstream.reset(handler)


def test_gzip_when_accepted(gateway: Gateway, upstreams: dict[str, RecordingUpstream]) -> None:
    answer(upstreams["products"])
    response = gateway.get("/list", [("Accept-Encoding", "gzip, deflate")])
    assert response.status == 200
    assert response.get("content-encoding") == "gzip"
    assert response.get("vary") == "Accept-Encoding"
    assert response.get("etag") == 'W/"v1"'
    assert gzip.decompress(response.body) == DOCUMENT
    assert len(response.body) < len(DOCUMENT) / 3
    # The upstream was asked as the client asked; it chose not to encode.
    assert upstreams["products"].requests[0].header("accept-encoding") == "gzip, deflate"


def test_brotli_preferred_when_accepted(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    answer(upstreams["products"])
    response = gateway.get("/list", [("Accept-Encoding", "gzip, br")])
    assert response.get("content-encoding") == "br"
    assert brotli.decompress(response.body) == DOCUMENT
    refused = gateway.get("/list", [("Accept-Encoding", "br;q=0, gzip")])
    assert refused.get("content-encoding") == "gzip"


def test_a_streamed_answer_is_compressed_as_it_streams(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    body = DOCUMENT * 20
    answer(upstreams["products"], body, framing="chunked")
    response = gateway.get("/list", [("Accept-Encoding", "gzip")])
    assert response.framing == "chunked"
    assert gzip.decompress(response.body) == body


def test_never_twice(gateway: Gateway, upstreams: dict[str, RecordingUpstream]) -> None:
    encoded = gzip.compress(DOCUMENT)
    answer(upstreams["products"], encoded, extra=[("Content-Encoding", "gzip")])
    response = gateway.get("/list", [("Accept-Encoding", "gzip, br")])
    assert response.get_all("content-encoding") == ["gzip"]
    assert response.body == encoded
    assert gzip.decompress(response.body) == DOCUMENT


@pytest.mark.parametrize(
    ("target", "headers", "content_type", "body", "extra"),
    [
        ("/list", [], "application/json", DOCUMENT, []),
        ("/list", [("Accept-Encoding", "identity")], "application/json", DOCUMENT, []),
        ("/list", [("Accept-Encoding", "gzip")], "image/png", DOCUMENT, []),
        ("/list", [("Accept-Encoding", "gzip")], "application/json", b"[1,2]", []),
        ("/list", [("Accept-Encoding", "gzip")], "application/json", DOCUMENT,
         [("Cache-Control", "no-transform")]),
        ("/raw/list", [("Accept-Encoding", "gzip")], "application/json", DOCUMENT, []),
    ],
)  # fmt: skip
def test_left_as_it_is(
    gateway: Gateway,
    upstreams: dict[str, RecordingUpstream],
    target: str,
    headers: list[tuple[str, str]],
    content_type: str,
    body: bytes,
    extra: list[tuple[str, str]],
) -> None:
    answer(upstreams["products"], body, content_type, extra)
    response = gateway.get(target, headers)
    assert response.get("content-encoding") is None
    assert response.body == body


def test_cached_answers_are_compressed_per_client(
    gateway: Gateway, upstreams: dict[str, RecordingUpstream]
) -> None:
    answer(upstreams["products"], extra=[("Cache-Control", "max-age=60")])
    plain = gateway.get("/cached/list")
    zipped = gateway.get("/cached/list", [("Accept-Encoding", "gzip")])
    assert (plain.get("x-cache"), plain.body) == ("miss", DOCUMENT)
    assert zipped.get("x-cache") == "hit"
    assert gzip.decompress(zipped.body) == DOCUMENT
    assert len(upstreams["products"].requests) == 1
