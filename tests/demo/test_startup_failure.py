"""A demo process that dies during start-up ends it at once, named, instead of the warm-up
waiting out its 30 s for answers that cannot come."""

from __future__ import annotations

import sys
import time

import anyio
import pytest

from sidecar.demo import load
from sidecar.demo.local import Running, warm_up
from sidecar.demo.ports import free_port

pytestmark = pytest.mark.timeout(30)


def test_warm_up_stops_at_once_when_a_service_process_has_exited() -> None:
    async def scenario() -> str:
        process = await anyio.open_process([sys.executable, "-c", "raise SystemExit(3)"])
        await process.wait()
        users = Running("users", app_port=0, inbound=0, admin=0, process=process)
        nobody = f"http://127.0.0.1:{free_port()}"  # refused: the mesh never answers 200
        async with load.client() as client:
            with pytest.raises(RuntimeError) as failure:
                await warm_up(client, nobody, load.Stats(), [users])
        return str(failure.value)

    started = time.monotonic()
    message = anyio.run(scenario)
    assert "users exited early (3)" in message
    assert "users.log" in message
    assert time.monotonic() - started < 10  # not the warm-up's 30 s
