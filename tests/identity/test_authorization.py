"""Authorization and the identity the app is told (RELIABILITY.md rows 25, 27, 28, 29).

A real sidecar pair with mTLS, the app sidecar's policy `default: deny, allow: [client]`:

    test -> client sidecar (upstream `app`) --mTLS--> app sidecar -> recording upstream
    test --mTLS, as any mesh identity-------------->  app sidecar

Checks: a valid identity the policy does not allow gets 403 with zero bytes to the app;
an allowed caller's request carries exactly one `x-forwarded-client-cert` made by the
sidecar, whatever the client sent; `X-Forwarded-For` gets the real socket peer appended;
an endpoint that is the sidecar itself answers 508 at once; the admin API listens on
127.0.0.1 only by default.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.identity.conftest import (
    LogWatch,
    assert_nothing_reached,
    marker,
)
from tests.support.certs import Leaf, Pki, client_context, spiffe_id
from tests.support.processes import MeshProcess, Sidecars, free_port, wait_until, write_yaml
from tests.support.rawclient import HttpConnection, Response, parse_head, send_raw
from tests.support.tlsclient import SourcedHttpConnection, TlsHttpConnection
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.timeout(60)

XFCC = f"By={spiffe_id('app')};URI={spiffe_id('client')}"


@dataclass
class Mesh:
    upstream: RecordingUpstream
    app: MeshProcess
    client: MeshProcess
    pki: Pki
    #: The app sidecar's mTLS listener.
    inbound_port: int
    #: The client sidecar's local port for service `app`.
    app_port: int
    #: The app sidecar's local ports for catalog services that are the sidecar itself.
    loop_ports: dict[str, int]
    #: The app sidecar's HTTP-proxy listener.
    proxy_port: int
    client_leaf: Leaf

    def direct(self, service: str, source: str | None = None) -> TlsHttpConnection:
        """A TLS connection to the app sidecar presenting a leaf for `service`."""
        leaf = self.client_leaf if service == "client" else self.pki.issue(service)
        return TlsHttpConnection(self.inbound_port, client_context(leaf), source=source)

    def via_pair(self, source: str | None = None) -> HttpConnection:
        """A plain connection to the client sidecar, which calls `app` over mTLS."""
        if source is None:
            return HttpConnection(self.app_port)
        return SourcedHttpConnection(self.app_port, source)


@pytest.fixture(scope="module")
def mesh_module(pki: Pki, sidecars: Sidecars) -> Iterator[Mesh]:
    with RecordingUpstream() as upstream:
        inbound_port, app_port, proxy_port = free_port(), free_port(), free_port()
        loop_ports = {name: free_port() for name in ("loop-inbound", "loop-localhost", "loop-self")}
        catalog = write_yaml(
            sidecars.log_dir / "app-catalog.yaml",
            {
                "services": {
                    "loop-inbound": [f"127.0.0.1:{inbound_port}"],
                    "loop-localhost": [f"localhost:{inbound_port}"],
                    "loop-self": [f"127.0.0.1:{loop_ports['loop-self']}"],
                }
            },
        )
        config = write_yaml(
            sidecars.log_dir / "app.yaml",
            {"authorization": {"default": "deny", "allow": ["client"], "deny": ["evil"]}},
        )
        loops = [
            arg for name, port in loop_ports.items() for arg in ("--upstream", f"{name}={port}")
        ]
        app = sidecars.start(
            "--service", "app", "--app-port", str(upstream.port),
            "--listen", f"127.0.0.1:{inbound_port}", "--config", str(config),
            "--catalog", str(catalog), "--proxy-port", str(proxy_port), "--access-log",
            *loops, *pki.issue("app").flags(), name="app",
        )  # fmt: skip
        client_catalog = write_yaml(
            sidecars.log_dir / "client-catalog.yaml",
            {"services": {"app": [f"127.0.0.1:{inbound_port}"]}},
        )
        client_leaf = pki.issue("client")
        client = sidecars.start(
            "--service", "client", "--catalog", str(client_catalog),
            "--upstream", f"app={app_port}", *client_leaf.flags(), name="client",
        )  # fmt: skip
        yield Mesh(
            upstream,
            app,
            client,
            pki,
            inbound_port,
            app_port,
            loop_ports,
            proxy_port,
            client_leaf,
        )


@pytest.fixture
def mesh(mesh_module: Mesh) -> Iterator[Mesh]:
    for proc in (mesh_module.app, mesh_module.client):
        assert proc.proc.poll() is None, proc.logs()
    mesh_module.upstream.reset()
    yield mesh_module
    for proc in (mesh_module.app, mesh_module.client):
        assert proc.proc.poll() is None, proc.logs()


def get(conn: HttpConnection, target: str, headers: list[tuple[str, str]]) -> Response:
    conn.request("GET", target, headers)
    return conn.read_response()


def open_connection(mesh: Mesh, path: str, source: str | None = None) -> HttpConnection:
    return mesh.via_pair(source) if path == "pair" else mesh.direct("client", source)


# -- row 25: a valid identity the policy does not allow ---------------------------------------
def test_identity_not_in_the_allow_list_gets_403_and_nothing_reaches_the_app(mesh: Mesh) -> None:
    watch = LogWatch(mesh.app)
    with mesh.direct("stranger") as conn:
        conn.request("POST", marker(), body=b"x" * 10_000)
        response = conn.read_response()
    assert response.status == 403
    assert response.get("x-mesh-error") == "forbidden"
    line = watch.wait_for("denied", spiffe_id("stranger"), spiffe_id("app"))
    assert "not on the allow list" in line
    assert_nothing_reached(mesh.upstream)


@pytest.mark.parametrize("path", ["pair", "direct"])
def test_allowed_caller_reaches_the_app_with_its_verified_identity(mesh: Mesh, path: str) -> None:
    target = marker()
    with open_connection(mesh, path) as conn:
        assert get(conn, target, []).status == 200
    (seen,) = mesh.upstream.requests
    assert seen.target == target
    assert seen.header_all("x-forwarded-client-cert") == [XFCC]


# -- row 27: identity headers a client sends ---------------------------------------------------
FORGED = f"By={spiffe_id('app')};URI={spiffe_id('admin')}"


@pytest.mark.parametrize("path", ["pair", "direct"])
def test_client_sent_client_cert_headers_are_replaced(mesh: Mesh, path: str) -> None:
    target = marker()
    headers = [
        ("x-forwarded-client-cert", FORGED),
        ("X-Forwarded-Client-Cert", "URI=spiffe://mesh.local/ns/default/dc/dc1/svc/root"),
        ("X-FORWARDED-CLIENT-CERT", FORGED),
    ]
    with open_connection(mesh, path) as conn:
        assert get(conn, target, headers).status == 200
    (seen,) = mesh.upstream.requests
    assert seen.header_all("x-forwarded-client-cert") == [XFCC]
    assert b"svc/admin" not in mesh.upstream.raw_received()


@pytest.mark.parametrize("name", ["X_Forwarded_Client_Cert", "x_forwarded_client_cert"])
@pytest.mark.parametrize("path", ["pair", "direct"])
def test_underscore_twin_of_the_identity_header_is_rejected(
    mesh: Mesh, path: str, name: str
) -> None:
    with open_connection(mesh, path) as conn:
        response = get(conn, marker(), [(name, FORGED)])
    assert response.status == 400
    assert response.get("x-mesh-error") == "bad-request"
    assert_nothing_reached(mesh.upstream)


def test_client_sent_l5d_client_id_is_not_forwarded(mesh: Mesh) -> None:
    forged = [("l5d-client-id", "admin.default.serviceaccount.identity.linkerd.local")]
    with mesh.direct("client") as conn:
        assert get(conn, marker(), forged).status == 200
    (seen,) = mesh.upstream.requests
    assert seen.header_all("l5d-client-id") == []


# -- row 28: X-Forwarded-For -------------------------------------------------------------------
def test_forwarded_for_gets_the_real_peer_appended(mesh: Mesh) -> None:
    """The caller connects from 127.0.0.2 and claims 127.0.0.1: both appear, in order."""
    with mesh.direct("client", source="127.0.0.2") as conn:
        target = marker()
        assert get(conn, target, [("X-Forwarded-For", "127.0.0.1")]).status == 200
    (seen,) = mesh.upstream.requests
    assert seen.header_all("x-forwarded-for") == ["127.0.0.1, 127.0.0.2"]

    # The access log names the socket peer, not the claim (written once the response is).
    def records() -> list[dict[str, object]]:
        return [r for r in mesh.app.access_log() if r["path"] == target]

    wait_until(lambda: bool(records()), 5, "the access log record")
    assert [r["client"] for r in records()] == ["127.0.0.2"]


def test_forwarded_for_across_the_pair_names_every_hop(mesh: Mesh) -> None:
    with mesh.via_pair(source="127.0.0.2") as conn:
        assert get(conn, marker(), [("X-Forwarded-For", "10.9.8.7")]).status == 200
    (seen,) = mesh.upstream.requests
    # client's claim, the client as the client sidecar saw it, the client sidecar itself.
    assert seen.header_all("x-forwarded-for") == ["10.9.8.7, 127.0.0.2, 127.0.0.1"]


# -- row 29: loops and the admin API -----------------------------------------------------------
@pytest.mark.parametrize(
    "service",
    [
        "loop-inbound",
        "loop-localhost",
        "loop-self",
    ],
)
def test_endpoint_that_is_the_sidecar_itself_gets_508(mesh: Mesh, service: str) -> None:
    accepted = mesh.app.admin("/listeners")["inbound"]["accepted"]
    started = time.monotonic()
    with HttpConnection(mesh.loop_ports[service]) as conn:
        conn.request("GET", marker(), host=service)
        response = conn.read_response()
    assert response.status == 508
    assert response.get("x-mesh-error") == "loop-detected"
    assert time.monotonic() - started < 1
    # No connection to itself was even opened.
    assert mesh.app.admin("/listeners")["inbound"]["accepted"] == accepted
    assert_nothing_reached(mesh.upstream)


def test_plaintext_sidecar_calling_its_own_upstream_port_gets_508(
    sidecars: Sidecars,
) -> None:
    port = free_port()
    catalog = write_yaml(
        sidecars.log_dir / "loop-catalog.yaml", {"services": {"loop": [f"127.0.0.1:{port}"]}}
    )
    # A small head limit bounds the recursion: each hop appends to X-Forwarded-For.
    config = write_yaml(sidecars.log_dir / "loop.yaml", {"limits": {"max_header_bytes": 1024}})
    proc = sidecars.start(
        "--service", "looper", "--catalog", str(catalog), "--config", str(config),
        "--upstream", f"loop={port}", name="looper",
    )  # fmt: skip
    with HttpConnection(port) as conn:
        conn.request("GET", marker(), host="loop")
        response = conn.read_response()
    accepted = proc.admin("/listeners")["upstream:loop"]["accepted"]
    assert (response.status, response.get("x-mesh-error"), accepted) == (508, "loop-detected", 1)


def test_proxy_request_to_the_sidecars_own_listener_gets_508(mesh: Mesh) -> None:
    request = (
        f"GET http://127.0.0.1:{mesh.inbound_port}/x HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{mesh.inbound_port}\r\nConnection: close\r\n\r\n"
    ).encode()
    head = parse_head(send_raw(mesh.proxy_port, request).data)
    assert head.status == 508
    assert head.get("x-mesh-error") == "loop-detected"
    assert_nothing_reached(mesh.upstream)


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket `pid` listens on, from the kernel's tables."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address, port = local.split(":")
            assert len(address) == width
            raw = bytes.fromhex(address)
            if width == 8:
                text = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                text = socket.inet_ntop(socket.AF_INET6, words)
            found.append((text, int(port, 16)))
    return sorted(found)


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_admin_api_listens_on_loopback_only_by_default(
    pki: Pki, tmp_path: Path, procs: list[MeshProcess]
) -> None:
    """No --admin: the default admin address, even with an mTLS inbound listener."""
    admin = ("127.0.0.1", 15000)
    try:
        wait_until(lambda: port_free(admin[1]), 10, "the default admin port to be free", step=0.2)
    except AssertionError:
        pytest.skip("port 15000 (the default admin port) stays in use on this machine")
    with RecordingUpstream() as upstream:
        inbound = free_port()
        proc = MeshProcess(
            ["sidecar", "--service", "app", "--app-port", str(upstream.port),
             "--listen", f"127.0.0.1:{inbound}", *pki.issue("app").flags()],
            tmp_path,
        )  # fmt: skip
        procs.append(proc)
        pid = proc.proc.pid
        # Wait on this process's own sockets: another process may hold port 15000 too.
        wait_until(
            lambda: proc.proc.poll() is not None or admin in listening_sockets(pid),
            15,
            "the sidecar to bind its admin port",
        )
        if proc.proc.poll() is not None:
            if "address already in use" in proc.logs():
                pytest.skip("another process took port 15000 (the default admin port) first")
            raise AssertionError(f"the sidecar exited:\n{proc.logs()}")
        assert listening_sockets(pid) == sorted([("127.0.0.1", inbound), admin])
        proc.admin_port = admin[1]
        proc.wait_ready()
        assert proc.admin("/config")["admin"] == "127.0.0.1:15000"
        assert proc.stop() == 0
