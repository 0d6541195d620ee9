"""Shared fixtures. Tests run real processes and sockets on loopback only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fixtures_consul import consul_agent, consul_binary  # noqa: F401
from tests.support.processes import MeshProcess


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
