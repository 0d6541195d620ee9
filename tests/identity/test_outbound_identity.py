"""Outbound mTLS: a peer must prove the identity discovery gave its endpoint (row 22).

A real sidecar for service `client` calls three catalog services over mTLS:

    ledger  -> a TLS recording peer presenting ledger's own leaf (the control)
    billing -> a TLS recording peer presenting a leaf for *another* service
    plain   -> a plaintext HTTP server (a recording upstream)

The wrong-identity and plaintext peers must receive no request byte: the recording peer
counts plaintext after the handshake, the plaintext server sees only the ClientHello.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.identity.conftest import marker
from tests.support.certs import Leaf, Pki, spiffe_id
from tests.support.processes import MeshProcess, Sidecars, free_port, wait_until, write_yaml
from tests.support.rawclient import HttpConnection, Response
from tests.support.tlspeer import TlsRecordingPeer
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.timeout(60)


@dataclass
class Outbound:
    proc: MeshProcess
    client: Leaf
    #: Local upstream port per service.
    ports: dict[str, int]
    ledger: TlsRecordingPeer
    billing: TlsRecordingPeer
    plain: RecordingUpstream

    def call(self, service: str, method: str = "GET", body: bytes | None = None) -> Response:
        with HttpConnection(self.ports[service]) as conn:
            conn.request(method, marker(), body=body, host=service)
            return conn.read_response()

    def pool(self, service: str) -> dict[str, Any]:
        (endpoint,) = self.proc.admin("/clusters")[service]["endpoints"]
        return dict(endpoint["pool"])


@pytest.fixture(scope="module")
def outbound(pki: Pki, sidecars: Sidecars) -> Iterator[Outbound]:
    ledger_leaf, other_leaf = pki.issue("ledger"), pki.issue("other")
    with (
        TlsRecordingPeer(ledger_leaf.cert, ledger_leaf.key, ledger_leaf.roots) as ledger,
        TlsRecordingPeer(other_leaf.cert, other_leaf.key, other_leaf.roots) as billing,
        RecordingUpstream() as plain,
    ):
        catalog = write_yaml(
            sidecars.log_dir / "catalog.yaml",
            {
                "services": {
                    "ledger": [f"127.0.0.1:{ledger.port}"],
                    "billing": [f"127.0.0.1:{billing.port}"],
                    "plain": [f"127.0.0.1:{plain.port}"],
                }
            },
        )
        ports = {name: free_port() for name in ("ledger", "billing", "plain")}
        client = pki.issue("client")
        upstreams = [
            arg for name, port in ports.items() for arg in ("--upstream", f"{name}={port}")
        ]
        proc = sidecars.start(
            "--service", "client", "--catalog", str(catalog), "--access-log",
            *upstreams, *client.flags(), name="client",
        )  # fmt: skip
        yield Outbound(proc, client, ports, ledger, billing, plain)


def all_ended(peer: TlsRecordingPeer) -> bool:
    return all(c.ended.is_set() for c in peer.connections)


def test_peer_proving_the_expected_identity_is_served(outbound: Outbound) -> None:
    response = outbound.call("ledger")
    assert response.status == 200
    assert response.body == b"ok"
    (handshake,) = outbound.ledger.handshakes()
    # The peer saw this sidecar's own leaf, and then the request.
    assert handshake.client_serial == outbound.client.serial
    assert handshake.client_uris == [spiffe_id("client")]
    assert bytes(handshake.plaintext).startswith(b"GET /probe-")


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_peer_proving_another_identity_gets_no_request_byte(
    outbound: Outbound, method: str
) -> None:
    before = outbound.pool("billing")["identity_mismatches"]
    body = b"payment details" if method == "POST" else None
    response = outbound.call("billing", method, body)
    assert response.status == 502
    assert response.get("x-mesh-error") == "peer-identity-mismatch"
    # The answer says who proved what, so an operator can tell a misrouted endpoint.
    assert spiffe_id("other").encode() in response.body
    assert spiffe_id("billing").encode() in response.body
    assert outbound.pool("billing")["identity_mismatches"] > before

    peer = outbound.billing
    assert peer.connections, "the sidecar never connected to the wrong peer"
    wait_until(lambda: all_ended(peer), 5, "the wrong peer's connections to end")
    assert peer.plaintext_total() == 0, [bytes(c.plaintext[:200]) for c in peer.connections]
    record = outbound.proc.access_log()[-1]
    assert (record["service"], record["status"], record["mesh_error"]) == (
        "billing",
        502,
        "peer-identity-mismatch",
    )


def test_plaintext_peer_gets_no_request_byte(outbound: Outbound) -> None:
    outbound.plain.reset()
    response = outbound.call("plain", "POST", b"secret body")
    assert response.status == 502
    assert response.get("x-mesh-error") == "upstream-tls-failed"
    assert outbound.pool("plain")["tls_failures"] >= 1

    plain = outbound.plain
    assert plain.connections, "the sidecar never connected to the plaintext peer"
    wait_until(
        lambda: all(c.closed.is_set() for c in plain.connections),
        5,
        "the plaintext peer's connections to close",
    )
    assert plain.requests == []
    for conn in plain.connections:
        # Only a TLS handshake record (0x16 0x03..) ever arrived: no request line, no body.
        assert bytes(conn.raw[:2]) == b"\x16\x03", bytes(conn.raw[:40])
        assert b"HTTP/1.1" not in conn.raw and b"/probe-" not in conn.raw
        assert b"secret body" not in conn.raw
