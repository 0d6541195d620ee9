"""HTTP/2 through a real sidecar pair with mTLS, between real HTTP/2 and HTTP/1.1 peers.

    h2c client -> client sidecar --mTLS, ALPN h2--> api sidecar --h2c--> h2c app (H2App)
              (upstream `api`, protocol http2)
    h2c client -> client sidecar --mTLS, HTTP/1.1--> web sidecar --HTTP/1.1--> RecordingUpstream
              (upstream `web`, plain HTTP service)

Checks: bodies and trailers intact end to end, many streams on one connection each hop, a
trailers-only answer, HTTP/1.1 apps reached from HTTP/2 callers, ALPN h2 on the mTLS
listener, large bodies both ways in bounded memory, and h2load through the pair.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.certs import Pki, client_context, spiffe_id
from tests.support.h2peer import H2App, H2Peer, pattern
from tests.support.processes import MeshProcess, Sidecars, free_port, peak_rss_kib, write_yaml
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.timeout(90)

#: Peak RSS a sidecar may reach while 32 MiB cross it each way (it idles near 50 MiB).
RSS_LIMIT_KIB = 160 * 1024


@dataclass
class Pair:
    app: H2App
    web_app: RecordingUpstream
    api: MeshProcess
    web: MeshProcess
    client: MeshProcess
    api_port: int
    web_port: int
    api_inbound: int
    #: The client sidecar's port for `dead`, an http2 service whose endpoint refuses.
    dead_port: int
    #: The client sidecar's HTTP-proxy port (routes by authority).
    proxy_port: int


@pytest.fixture(scope="module")
def pair(pki: Pki, sidecars: Sidecars) -> Iterator[Pair]:
    app = H2App()
    web_app = RecordingUpstream()
    api_inbound, web_inbound, api_port, web_port, dead_port, proxy_port = (
        free_port() for _ in range(6)
    )
    api = sidecars.start(
        "--service", "api", "--app-port", str(app.port), "--listen", f"127.0.0.1:{api_inbound}",
        "--config", str(write_yaml(sidecars.log_dir / "api.yaml", {"app_protocol": "http2"})),
        "--access-log", *pki.issue("api").flags(), name="api",
    )  # fmt: skip
    web = sidecars.start(
        "--service", "web", "--app-port", str(web_app.port),
        "--listen", f"127.0.0.1:{web_inbound}", "--access-log", *pki.issue("web").flags(),
        name="web",
    )  # fmt: skip
    catalog = write_yaml(
        sidecars.log_dir / "catalog.yaml",
        {
            "services": {
                "api": [f"127.0.0.1:{api_inbound}"],
                "web": [f"127.0.0.1:{web_inbound}"],
                "dead": [f"127.0.0.1:{free_port()}"],  # nothing listens there
            }
        },
    )
    client = sidecars.start(
        "--service", "client", "--catalog", str(catalog),
        "--upstream", f"api={api_port}/http2", "--upstream", f"web={web_port}",
        "--upstream", f"dead={dead_port}/grpc", "--proxy-port", str(proxy_port),
        "--access-log", *pki.issue("client").flags(), name="client",
    )  # fmt: skip
    try:
        yield Pair(
            app, web_app, api, web, client, api_port, web_port, api_inbound, dead_port, proxy_port
        )
    finally:
        app.stop()
        web_app.close()


def test_body_and_trailers_cross_the_pair_intact(pair: Pair) -> None:
    body = bytes(range(256)) * 300
    with H2Peer(pair.api_port) as peer:
        response = peer.request(
            "POST", "/echo", [("content-type", "application/grpc")], body=body,
            trailers=[("x-client-trailer", "sent")],
        )  # fmt: skip
    assert response.status == 200
    assert bytes(response.body) == body
    assert response.trailers["x-trailer"] == "done"
    assert response.trailers["grpc-status"] == "0"
    assert response.trailers["x-request-trailer-x-client-trailer"] == "sent"
    seen = pair.app.requests[-1]
    assert seen[":path"] == "/echo" and seen[":method"] == "POST"
    assert seen["te"] == "trailers"
    # The app learns who called, from its sidecar, as over HTTP/1.1.
    assert seen["x-forwarded-client-cert"] == f"By={spiffe_id('api')};URI={spiffe_id('client')}"


def test_a_trailers_only_answer_keeps_its_status_fields(pair: Pair) -> None:
    with H2Peer(pair.api_port) as peer:
        response = peer.request("GET", "/status/200")
    assert response.status == 200
    assert (response.headers | response.trailers)["grpc-status"] == "14"
    assert bytes(response.body) == b""


def test_many_streams_share_one_connection_per_hop(pair: Pair) -> None:
    before = pair.app.connections
    with H2Peer(pair.api_port) as peer:
        ids = [peer.start("GET", f"/stream/{i}") for i in range(60)]
        responses = [peer.wait(i) for i in ids]
    assert [r.status for r in responses] == [200] * 60
    assert {r.headers["x-seen-path"] for r in responses} == {f"/stream/{i}" for i in range(60)}
    assert pair.app.connections - before <= 1  # the api sidecar reuses its h2c connection
    (endpoint,) = pair.client.admin("/clusters")["api"]["endpoints"]
    assert endpoint["pool"]["http2"]["connections"] == 1


def test_http2_callers_reach_an_http1_app(pair: Pair) -> None:
    with H2Peer(pair.web_port) as peer:
        got = peer.request("GET", "/hello?x=1", [("x-custom", "yes")])
        posted = peer.request("POST", "/submit", body=b"form=1")
    assert got.status == 200 and posted.status == 200
    first, second = pair.web_app.requests[-2:]
    assert (first.method, first.target, first.http_version) == ("GET", "/hello?x=1", "1.1")
    assert first.header("x-custom") == "yes"
    assert first.header("host") == "app"
    assert second.body == b"form=1"
    assert bytes(posted.body).decode().strip().endswith(hashlib.sha256(b"form=1").hexdigest())


def test_the_mtls_listener_negotiates_h2_by_alpn(pair: Pair, pki: Pki) -> None:
    context = client_context(pki.issue("client", name="client-alpn"))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with H2Peer(pair.api_inbound, tls=context) as peer:
        assert peer.sock.selected_alpn_protocol() == "h2"  # type: ignore[attr-defined]
        response = peer.request("POST", "/echo", body=b"over alpn")
    assert (response.status, bytes(response.body)) == (200, b"over alpn")
    assert response.trailers["x-trailer"] == "done"
    # Between the sidecars, too: the client sidecar's connection to api speaks h2.
    line = next(x for x in pair.api.access_log() if x["path"] == "/echo")
    assert line["status"] == 200


def test_large_bodies_stream_both_ways_in_bounded_memory(pair: Pair) -> None:
    size = 32 * 1024 * 1024
    expected = hashlib.sha256()
    for chunk in pattern(size):
        expected.update(chunk)
    with H2Peer(pair.api_port, timeout=60) as peer:
        up = peer.request("POST", "/upload", body=pattern(size))
        down_id = peer.start("GET", f"/download?size={size}")
        peer.responses[down_id].keep = 0
        down = peer.wait(down_id)
    assert (up.status, up.headers["x-size"], up.trailers["x-size"]) == (200, str(size), str(size))
    assert up.headers["x-sha256"] == expected.hexdigest()
    assert (down.status, down.size, down.digest) == (200, size, expected.hexdigest())
    assert down.trailers["x-sha256"] == expected.hexdigest()
    for proc in (pair.client, pair.api):
        peak = peak_rss_kib(proc.proc.pid)
        assert peak < RSS_LIMIT_KIB, f"{proc.name} peaked at {peak // 1024} MiB"


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) missing")
@pytest.mark.parametrize(
    ("service", "connections", "streams"),
    [
        ("api", 4, 16),
        ("web", 4, 16),
        # 640 streams at once: more than one upstream connection may carry (the peer allows
        # 100), so the caller's sidecar opens more instead of sending streams to be refused.
        ("api", 64, 10),
    ],
)
def test_h2load_through_the_pair_all_requests_succeed(
    pair: Pair, service: str, connections: int, streams: int
) -> None:
    port = pair.api_port if service == "api" else pair.web_port
    total = str(max(2000, 10 * connections * streams))
    run = subprocess.run(
        [
            "h2load", "-n", total, "-c", str(connections), "-m", str(streams), "-T", "20",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", run.stdout)
    assert done is not None, run.stdout
    assert done.groups() == (total, total, total), run.stdout
    assert f"{total} 2xx" in run.stdout, run.stdout


@pytest.mark.parametrize("size", [0, 1, 16383, 16384, 16385, 65535, 65536, 1 << 20])
def test_request_and_response_bodies_arrive_byte_exact(pair: Pair, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    with H2Peer(pair.api_port) as peer:
        # Chunks of awkward sizes, so DATA frames and reads never line up.
        chunks = iter([data[i : i + 7919] for i in range(0, size, 7919)])
        up = peer.request("POST", "/upload", body=chunks if size else b"")
        echoed = peer.request("POST", "/echo", body=data)
    assert (up.status, up.headers["x-size"]) == (200, str(size))
    assert up.headers["x-sha256"] == hashlib.sha256(data).hexdigest()
    assert echoed.size == size and echoed.digest == hashlib.sha256(data).hexdigest()


def test_an_upstream_stream_reset_is_upstream_reset(pair: Pair) -> None:
    with H2Peer(pair.api_port) as peer:
        response = peer.request("GET", "/reset")
        after = peer.request("GET", "/after-reset")
    assert response.status == 502
    assert response.headers["x-mesh-error"] == "upstream-reset"
    assert after.status == 200  # the connection carrying the reset stream goes on


def test_a_goaway_connection_is_replaced_not_reused(pair: Pair) -> None:
    with H2Peer(pair.api_port) as peer:
        assert peer.request("GET", "/goaway").status == 200
        responses = [peer.request("GET", f"/after-goaway/{i}") for i in range(3)]
    assert [r.status for r in responses] == [200] * 3
    served = dict(pair.app.served_on)
    after = {served[f"/after-goaway/{i}"] for i in range(3)}
    assert served["/goaway"] not in after  # the connection that said GOAWAY got no more
    assert len(after) == 1  # the three went on one connection, reused


def test_an_http2_upstream_that_refuses_connections_is_upstream_connect_failed(
    pair: Pair,
) -> None:
    with H2Peer(pair.dead_port) as peer:
        response = peer.request("GET", "/nobody-home")
    assert response.status == 503
    assert response.headers["x-mesh-error"] == "upstream-connect-failed"


def test_the_proxy_port_routes_http2_streams_by_authority(pair: Pair) -> None:
    with H2Peer(pair.proxy_port) as peer:
        to_api = peer.request("POST", "/echo", body=b"by authority", authority="api")
        to_web = peer.request("GET", "/via-proxy", authority="web")
    assert (to_api.status, bytes(to_api.body)) == (200, b"by authority")
    assert to_api.trailers["x-trailer"] == "done"
    assert to_web.status == 200
    assert pair.web_app.requests[-1].target == "/via-proxy"
