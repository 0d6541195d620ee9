"""Clean-up for the sidecar process tests: no child of a `mesh` process outlives its test.

The shared `procs` fixture kills each `mesh` process it holds; an app started by
`mesh attach` (or by the demo) would then be left running. This fixture, set up after
`procs` and so torn down before it, stops the children of every still-running `mesh`
process first, by PID.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.sidecar.helpers import descendants, start_time, stop_leftovers
from tests.support.processes import MeshProcess


@pytest.fixture(autouse=True)
def no_stray_children(procs: list[MeshProcess]) -> Iterator[None]:
    yield
    children: dict[int, int] = {}
    for proc in procs:
        if proc.proc.poll() is None:
            for pid in descendants(proc.proc.pid):
                if (started := start_time(pid)) is not None:
                    children[pid] = started
            with contextlib.suppress(OSError):
                proc.proc.kill()
            proc.proc.wait(5)
    stop_leftovers(children)
