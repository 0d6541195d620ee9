"""Pytest fixtures for a real Consul agent; import them into tests/conftest.py.

    from tests.support.fixtures_consul import consul_agent, consul_binary

`consul_binary` runs scripts/install-consul.sh once per session. If no agent can be had, that
is a hard error, so CI cannot go green without Consul; set MESH_ALLOW_SKIP_CONSUL=1 to skip
those tests instead. Tests that stop or restart an agent should start their own
`ConsulAgent(consul_binary)` rather than disturb the shared `consul_agent`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.consul_agent import ConsulAgent

__all__ = ["consul_agent", "consul_binary", "install_consul"]

INSTALL_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-consul.sh"
# Under pytest-timeout's 120s per test, which counts session fixture set-up too.
INSTALL_TIMEOUT = 100.0


def install_consul() -> str:
    """Path of a runnable consul binary, fetched if needed; RuntimeError saying why not."""
    try:
        done = subprocess.run(
            [str(INSTALL_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{INSTALL_SCRIPT} could not run: {exc}") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"{INSTALL_SCRIPT} failed (exit {done.returncode}):\n{tail}")
    return lines[-1]


@pytest.fixture(scope="session")
def consul_binary() -> str:
    try:
        return install_consul()
    except RuntimeError as exc:
        if os.environ.get("MESH_ALLOW_SKIP_CONSUL") == "1":
            pytest.skip(f"no Consul agent available (MESH_ALLOW_SKIP_CONSUL=1): {exc}")
        pytest.fail(f"no Consul agent available: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def consul_agent(consul_binary: str) -> Iterator[ConsulAgent]:
    """One dev-mode agent shared by the session; use unique service names per test."""
    with ConsulAgent(consul_binary) as agent:
        yield agent
