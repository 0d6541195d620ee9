"""Fixtures for the identity tests: a mesh CA on disk and real sidecar processes with mTLS.

Each module gets its own CA (`pki`) and its own group of sidecars (`sidecars`), started
once per module and killed by PID when the module ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.certs import Pki
from tests.support.processes import MeshProcess, Sidecars, wait_until
from tests.support.upstream import RecordingUpstream


def stderr_text(proc: MeshProcess) -> str:
    """Everything the process has logged so far (MeshProcess.logs() keeps only the tail)."""
    return proc.stderr_path.read_text(errors="replace")


class LogWatch:
    """Lines a process logs from now on."""

    def __init__(self, proc: MeshProcess) -> None:
        self.proc = proc
        self.offset = len(stderr_text(proc))

    def lines(self) -> list[str]:
        return stderr_text(self.proc)[self.offset :].splitlines()

    def matching(self, *words: str) -> list[str]:
        return [line for line in self.lines() if all(w in line for w in words)]

    def wait_for(self, *words: str, timeout: float = 5.0) -> str:
        wait_until(lambda: bool(self.matching(*words)), timeout, f"a log line with {words}")
        return self.matching(*words)[0]


def assert_nothing_reached(upstream: RecordingUpstream) -> None:
    """Not one byte has reached the app since the last reset (connections may be open)."""
    assert upstream.raw_bytes_total() == 0, (
        f"the app received bytes: {upstream.raw_received()[:300]!r}"
    )
    assert upstream.requests == []


def marker() -> str:
    """A request target no other request uses, to recognise one request upstream."""
    return f"/probe-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecars]:
    group = Sidecars(tmp_path_factory.mktemp("sidecars"))
    yield group
    group.stop_all()
