"""The inbound mTLS listener refuses callers it cannot trust (RELIABILITY.md rows 18-21).

A real sidecar for service `app` listens with mTLS in front of a recording upstream. Callers
are plain Python `ssl` clients presenting leaves from the mesh CA, from a second CA, or
hand-made ones signed by the mesh root (expired, not yet valid, no SPIFFE ID). Every
refusal must leave the app without a single byte: after it, a trusted caller's request is
the first thing the upstream has ever received since the reset.
"""

from __future__ import annotations

import datetime as dt
import ssl
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
from tests.support.tlsclient import Attempt, TlsHttpConnection, attempt
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.timeout(60)


@dataclass
class Inbound:
    proc: MeshProcess
    upstream: RecordingUpstream
    port: int
    pki: Pki
    #: A caller the listener trusts and the policy allows.
    client: Leaf

    def refused_no_identity(self) -> int:
        return int(self.proc.admin("/listeners")["inbound"]["refused_no_identity"])

    def open_connections(self) -> int:
        return int(self.proc.admin("/listeners")["inbound"]["open"])


@pytest.fixture(scope="module")
def inbound_module(pki: Pki, sidecars: Sidecars) -> Iterator[Inbound]:
    with RecordingUpstream() as upstream:
        port = free_port()
        config = write_yaml(
            sidecars.log_dir / "app.yaml",
            {"authorization": {"default": "allow", "deny": ["evil"]}},
        )
        proc = sidecars.start(
            "--service", "app", "--app-port", str(upstream.port),
            "--listen", f"127.0.0.1:{port}", "--config", str(config),
            *pki.issue("app").flags(), name="app",
        )  # fmt: skip
        yield Inbound(proc, upstream, port, pki, pki.issue("client"))


@pytest.fixture
def inbound(inbound_module: Inbound) -> Iterator[Inbound]:
    assert inbound_module.proc.proc.poll() is None, inbound_module.proc.logs()
    inbound_module.upstream.reset()
    yield inbound_module
    assert inbound_module.proc.proc.poll() is None, inbound_module.proc.logs()


def request_bytes(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n".encode()


def assert_refused(result: Attempt) -> None:
    """The server ended the connection promptly and answered nothing."""
    assert result.data == b"", f"the listener answered: {result.data[:300]!r}"
    assert result.error != "timeout", "the listener neither answered nor closed"
    assert result.elapsed < 4


def assert_first_to_reach_app(inbound: Inbound) -> None:
    """A trusted request now is the very first thing the app has received since the reset."""
    target = marker()
    with TlsHttpConnection(inbound.port, client_context(inbound.client)) as conn:
        conn.request("GET", target)
        response = conn.read_response()
    assert response.status == 200, response.body[:300]
    seen = inbound.upstream.raw_received()
    assert seen.startswith(f"GET {target} HTTP/1.1\r\n".encode()), (
        f"the app received bytes before the trusted request: {seen[:300]!r}"
    )
    assert [r.target for r in inbound.upstream.requests] == [target]


def refused_callers(pki: Pki, tmp: Path) -> dict[str, tuple[ssl.SSLContext, str]]:
    """Callers the handshake must refuse, with the alert each should get (TLS 1.3)."""
    now = dt.datetime.now(dt.UTC)
    client = spiffe_id("client")
    other_ca = Pki(tmp / "other-ca")
    expired = pki.craft(
        "expired",
        uris=(client,),
        not_before=now - dt.timedelta(days=2),
        not_after=now - dt.timedelta(days=1),
    )
    future = pki.craft(
        "future",
        uris=(client,),
        not_before=now + dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=2),
    )
    roots = pki.root_cert
    return {
        "unknown-ca": (
            client_context(other_ca.issue("client"), roots),
            "TLSV1_ALERT_UNKNOWN_CA",
        ),
        "expired": (client_context(expired, roots), "SSLV3_ALERT_CERTIFICATE_EXPIRED"),
        "not-yet-valid": (client_context(future, roots), "SSLV3_ALERT_BAD_CERTIFICATE"),
        "no-certificate": (client_context(None, roots), "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
    }


CASES = ["unknown-ca", "expired", "not-yet-valid", "no-certificate"]


def test_trusted_caller_is_served(inbound: Inbound) -> None:
    target = marker()
    with TlsHttpConnection(inbound.port, client_context(inbound.client)) as conn:
        assert conn.peer_serial() == Leaf(inbound.pki.dir / "app").serial
        conn.request("GET", target)
        response = conn.read_response()
    assert response.status == 200
    (seen,) = inbound.upstream.requests
    assert seen.target == target
    assert seen.header_all("x-forwarded-client-cert") == [
        f"By={spiffe_id('app')};URI={spiffe_id('client')}"
    ]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_untrusted_caller_is_refused_at_the_handshake(
    inbound: Inbound, tmp_path: Path, case: str, version: str
) -> None:
    """Rows 18 (unknown CA), 19 (expired, not yet valid) and 20 (no certificate)."""
    context, _ = refused_callers(inbound.pki, tmp_path)[case]
    context.minimum_version = context.maximum_version = ssl.TLSVersion[version]
    refused_no_identity = inbound.refused_no_identity()
    result = attempt(inbound.port, context, request_bytes(marker()))
    assert_refused(result)
    if version == "TLSv1_2":
        # In TLS 1.2 the client's certificate is checked before the handshake completes.
        assert not result.handshake_done, result
    # Refused by the handshake itself, not by the later SPIFFE ID check.
    assert inbound.refused_no_identity() == refused_no_identity
    assert_nothing_reached(inbound.upstream)
    assert_first_to_reach_app(inbound)


@pytest.mark.parametrize("case", CASES)
def test_refusal_tells_the_caller_why_with_an_alert(
    inbound: Inbound, tmp_path: Path, case: str
) -> None:
    context, alert = refused_callers(inbound.pki, tmp_path)[case]
    result = attempt(inbound.port, context, request_bytes(marker()))
    assert_refused(result)
    assert result.alert() == alert, f"no {alert}; the connection ended with {result.error!r}"


def test_refusal_is_logged_with_its_reason(inbound: Inbound, tmp_path: Path) -> None:
    context, _ = refused_callers(inbound.pki, tmp_path)["unknown-ca"]
    watch = LogWatch(inbound.proc)
    assert_refused(attempt(inbound.port, context, request_bytes(marker())))
    assert_first_to_reach_app(inbound)  # the refusal was handled before this was served
    reasons = ("certificate verify failed", "unknown ca", "unable to get local issuer")
    logged = [line for line in watch.lines() if any(r in line.lower() for r in reasons)]
    assert logged, "no log line gives the reason:\n" + "\n".join(watch.lines())


@pytest.mark.parametrize(
    "names",
    [
        {"dns": ("client.mesh.local",)},
        {"uris": ("spiffe://mesh.local/workload/client",)},
    ],
    ids=["dns-name-only", "uri-not-a-service-id"],
)
def test_valid_chain_without_spiffe_id_is_closed_before_any_request_byte(
    inbound: Inbound, names: dict[str, tuple[str, ...]]
) -> None:
    """Row 21: the chain verifies, but the caller has no service identity."""
    leaf = inbound.pki.craft(f"anonymous-{next(iter(names))}", **names)
    context = client_context(leaf)
    refused_before = inbound.refused_no_identity()
    watch = LogWatch(inbound.proc)

    # Sending nothing at all: the listener closes by itself, long before its 10 s header
    # timeout, so the identity check ran before a request byte could have been read.
    silent = attempt(inbound.port, context, None)
    assert silent.handshake_done, silent
    assert_refused(silent)
    assert silent.elapsed < 2

    # With a request written at once, still nothing is answered or forwarded.
    assert_refused(attempt(inbound.port, context, request_bytes(marker())))
    assert inbound.refused_no_identity() == refused_before + 2
    assert len(watch.matching("refused a TLS peer from 127.0.0.1: no SPIFFE ID")) == 2
    assert_nothing_reached(inbound.upstream)
    assert_first_to_reach_app(inbound)


def test_caller_on_the_deny_list_gets_403_naming_both_identities(inbound: Inbound) -> None:
    """Row 21: a verified SPIFFE ID that policy denies."""
    watch = LogWatch(inbound.proc)
    with TlsHttpConnection(inbound.port, client_context(inbound.pki.issue("evil"))) as conn:
        conn.request("POST", marker(), body=b"must not reach the app")
        response = conn.read_response()
    assert response.status == 403
    assert response.get("x-mesh-error") == "forbidden"
    line = watch.wait_for("denied", spiffe_id("evil"), spiffe_id("app"))
    assert "deny list" in line
    assert_nothing_reached(inbound.upstream)
    assert_first_to_reach_app(inbound)


def test_graceful_tls_close_is_not_an_error(inbound: Inbound) -> None:
    with TlsHttpConnection(inbound.port, client_context(inbound.client)) as conn:
        conn.request("GET", marker())
        assert conn.read_response().status == 200
        watch = LogWatch(inbound.proc)
        assert isinstance(conn.sock, ssl.SSLSocket)
        try:
            conn.sock.unwrap()  # send close_notify, then read the listener's
            ended = "close_notify"
        except (ssl.SSLError, OSError) as exc:
            ended = repr(exc)
    wait_until(lambda: inbound.open_connections() == 0, 5, "the connection to close")
    errors = [line for line in watch.lines() if " ERROR " in line]
    assert errors == [], "\n".join(watch.lines())
    assert ended == "close_notify"
