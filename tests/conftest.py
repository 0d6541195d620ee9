"""Shared fixtures. Tests run real processes and sockets on loopback only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import mesh
from tests.support.fixtures_consul import consul_agent, consul_binary  # noqa: F401
from tests.support.processes import MeshProcess


def pytest_configure(config: pytest.Config) -> None:
    stale = mesh.stale_extensions()
    if stale:
        pytest.exit(
            "compiled modules are older than their sources (run scripts/bootstrap to rebuild): "
            + ", ".join(stale),
            returncode=2,
        )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[MeshProcess]]:
    """Processes a test starts; all are stopped (by PID) when it ends."""
    started: list[MeshProcess] = []
    yield started
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(5)
