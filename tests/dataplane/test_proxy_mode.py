"""The HTTP-proxy listener (`--proxy-port`): routing by host, passthrough and loops.

An absolute-form request for a catalog service crosses the sidecar pair; one for a host the
mesh does not know goes straight to its real address (or is refused with 403 under
`--passthrough deny`); one addressed to a port of the sidecar itself is answered 508 at
once instead of looping (RELIABILITY row 29).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.dataplane.conftest import MeshPair
from tests.support.processes import MeshProcess, Sidecars, free_port, write_yaml
from tests.support.rawclient import HttpConnection, Response
from tests.support.upstream import RecordingUpstream


@pytest.fixture(scope="module")
def outside() -> Iterator[RecordingUpstream]:
    """A server outside the mesh (not in any catalog)."""
    with RecordingUpstream() as server:
        yield server


@dataclass
class DenySidecar:
    sidecar: MeshProcess
    proxy_port: int


@pytest.fixture(scope="module")
def deny_sidecar(sidecars: Sidecars, pair: MeshPair) -> DenySidecar:
    """A proxy-mode sidecar started with `--passthrough deny`."""
    catalog = write_yaml(
        sidecars.log_dir / "deny-catalog.yaml",
        {"services": {"app": [f"127.0.0.1:{pair.inbound_port}"]}},
    )
    proxy_port = free_port()
    proc = sidecars.start(
        "--service",
        "client",
        "--catalog",
        str(catalog),
        "--proxy-port",
        str(proxy_port),
        "--passthrough",
        "deny",
        name="deny",
    )
    return DenySidecar(proc, proxy_port)


def proxy_get(port: int, url: str, host: str | None = None) -> Response:
    authority = url.split("/", 3)[2]
    with HttpConnection(port, timeout=5) as conn:
        conn.send(
            f"GET {url} HTTP/1.1\r\nHost: {host or authority}\r\nConnection: close\r\n\r\n".encode()
        )
        return conn.read_response()


def test_absolute_form_to_a_mesh_service_crosses_the_pair(mesh: MeshPair) -> None:
    response = proxy_get(mesh.proxy_port, "http://app/through/proxy?x=1")
    assert (response.status, response.get("x-echo-target")) == (200, "/through/proxy?x=1")
    (seen,) = mesh.upstream.requests
    assert seen.header_all("host") == ["app"]
    # Two hops appended the peer: the outbound and the inbound sidecar.
    assert seen.header_all("x-forwarded-for") == ["127.0.0.1, 127.0.0.1"]


def test_origin_form_on_the_proxy_port_routes_by_host(mesh: MeshPair) -> None:
    with HttpConnection(mesh.proxy_port, timeout=5) as conn:
        conn.request("GET", "/by-host", host="app")
        response = conn.read_response()
    assert (response.status, response.get("x-echo-target")) == (200, "/by-host")


def test_non_mesh_host_passes_through_to_its_real_address(
    mesh: MeshPair, outside: RecordingUpstream
) -> None:
    outside.reset()
    response = proxy_get(mesh.proxy_port, f"http://localhost:{outside.port}/outside?q=2")
    assert (response.status, response.get("x-echo-target")) == (200, "/outside?q=2")
    (seen,) = outside.requests
    assert seen.header_all("host") == [f"localhost:{outside.port}"]
    assert seen.target == "/outside?q=2"
    assert mesh.upstream.requests == []


def test_passthrough_deny_refuses_non_mesh_hosts(
    deny_sidecar: DenySidecar, outside: RecordingUpstream, pair: MeshPair
) -> None:
    outside.reset()
    port = deny_sidecar.proxy_port
    response = proxy_get(port, f"http://127.0.0.1:{outside.port}/denied")
    assert response.status == 403
    assert response.get("x-mesh-error") == "passthrough-denied"
    assert response.body.count(b"\n") == 1
    assert outside.raw_bytes_total() == 0
    # Mesh services still work through the same listener.
    pair.upstream.reset()
    assert proxy_get(port, "http://app/allowed").status == 200


@pytest.mark.parametrize("which", ["proxy", "upstream-listener", "admin"])
def test_request_to_the_sidecar_itself_is_a_loop(mesh: MeshPair, which: str) -> None:
    own_port = {
        "proxy": mesh.proxy_port,
        "upstream-listener": mesh.outbound_port,
        "admin": mesh.outbound.admin_port,
    }[which]
    before = mesh.outbound.admin("/listeners")
    for host in ("127.0.0.1", "localhost"):
        response = proxy_get(mesh.proxy_port, f"http://{host}:{own_port}/again")
        assert response.status == 508
        assert response.get("x-mesh-error") == "loop-detected"
    after = mesh.outbound.admin("/listeners")
    # Only the two test connections reached the proxy listener: nothing recursed.
    assert after["proxy"]["accepted"] - before["proxy"]["accepted"] == 2
    for name in after:
        if name != "proxy":
            assert after[name]["accepted"] - before[name]["accepted"] <= (name == "admin")
    assert mesh.upstream.raw_bytes_total() == 0
