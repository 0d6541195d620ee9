"""Fixtures for the data-plane tests: a recording upstream behind real sidecar processes.

The usual topology is the full pair a mesh call crosses:

    test client -> outbound sidecar A (127.0.0.1:outbound_port, upstream `app`)
                -> inbound sidecar B (127.0.0.1:inbound_port) -> recording upstream

A starts with `--upstream app=PORT --proxy-port PORT --access-log`, B with `--access-log`.
Sidecars are module-scoped (a start costs about half a second); each test gets the
upstream's evidence cleared and its handler reset by the function-scoped `mesh` fixture.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.processes import BARE_DATA_PATH, MeshProcess, Sidecars, free_port, write_yaml
from tests.support.rawclient import parse_head, send_raw
from tests.support.upstream import RecordingUpstream


@dataclass
class MeshPair:
    upstream: RecordingUpstream
    outbound: MeshProcess
    inbound: MeshProcess
    #: A's listener for service `app`.
    outbound_port: int
    #: A's HTTP-proxy listener.
    proxy_port: int
    #: B's public listener.
    inbound_port: int

    def alive(self) -> None:
        for proc in (self.outbound, self.inbound):
            code = proc.proc.poll()
            assert code is None, f"{proc.name} exited ({code}):\n{proc.logs()}"


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecars]:
    group = Sidecars(tmp_path_factory.mktemp("sidecars"))
    yield group
    group.stop_all()


@pytest.fixture(scope="module")
def pair(sidecars: Sidecars) -> Iterator[MeshPair]:
    with RecordingUpstream() as upstream:
        yield start_pair(sidecars, upstream)


def start_pair(sidecars: Sidecars, upstream: RecordingUpstream) -> MeshPair:
    inbound_port, outbound_port, proxy_port = free_port(), free_port(), free_port()
    inbound = sidecars.start(
        "--service",
        "app",
        "--app-port",
        str(upstream.port),
        "--listen",
        f"127.0.0.1:{inbound_port}",
        "--access-log",
        name=f"inbound-{inbound_port}",
    )
    catalog = write_yaml(
        sidecars.log_dir / f"catalog-{outbound_port}.yaml",
        {"services": {"app": [f"127.0.0.1:{inbound_port}"]}},
    )
    bare = write_yaml(sidecars.log_dir / "bare-data-path.yaml", BARE_DATA_PATH)
    outbound = sidecars.start(
        "--config",
        str(bare),
        "--service",
        "client",
        "--upstream",
        f"app={outbound_port}",
        "--catalog",
        str(catalog),
        "--proxy-port",
        str(proxy_port),
        "--access-log",
        name=f"outbound-{outbound_port}",
    )
    return MeshPair(upstream, outbound, inbound, outbound_port, proxy_port, inbound_port)


@pytest.fixture
def mesh(pair: MeshPair) -> Iterator[MeshPair]:
    """The module's pair with fresh upstream evidence and the default (echo) handler."""
    pair.alive()
    pair.upstream.reset()
    yield pair
    pair.alive()
    assert pair.upstream.errors == [], "the upstream refused what the proxy forwarded"


def assert_nothing_forwarded(upstream: RecordingUpstream, port: int) -> None:
    """No byte of an earlier (refused) request reached the upstream.

    A well-formed request is sent after it; it must be the very first thing the upstream
    has received since the last reset, and the only request.
    """
    marker = f"/after-refusal-{uuid.uuid4().hex}"
    result = send_raw(
        port, f"GET {marker} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n".encode(), 5
    )
    assert parse_head(result.data).status == 200, result.data[:300]
    seen = upstream.raw_received()
    assert seen.startswith(f"GET {marker} HTTP/1.1\r\n".encode()), (
        f"the upstream received bytes before the follow-up request: {seen[:300]!r}"
    )
    assert [r.target for r in upstream.requests] == [marker]
