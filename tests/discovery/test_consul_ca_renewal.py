"""The Consul CA source renews a leaf at 2/3 of its validity even when its watch misses it.

A scripted agent: blocking queries never return (the watch hears of nothing), while a plain
fetch of the leaf gives the renewed one once the watch is blocked. The leaf loaded at start
is already past its renewal point, so only the renewal timer can bring the new one.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from discovery.blocking import LoopPolicy
from discovery.consul_ca import ConsulCaSource
from mesh.identity.tls import Pems
from tests.support.certs import Leaf, Pki, spiffe_id

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


def leaf_answer(leaf: Leaf) -> dict[str, Any]:
    return {
        "CertPEM": leaf.cert.read_text(),
        "PrivateKeyPEM": leaf.key.read_text(),
        "SerialNumber": f"{leaf.serial:x}",
    }


class ScriptedAgent:
    def __init__(self, first: Leaf, renewed: Leaf, roots: Path) -> None:
        self.http = SimpleNamespace(base_uri="scripted")
        self.first, self.renewed = leaf_answer(first), leaf_answer(renewed)
        self.roots_pem = roots.read_text()
        self.watch_blocked = False
        self.plain_leaf_fetches = 0

    async def leaf(
        self, service: str, index: int | None = None, wait: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        if index is not None:
            self.watch_blocked = True
            await anyio.sleep_forever()  # the watch never hears of the renewal
        self.plain_leaf_fetches += 1
        return 7, self.renewed if self.watch_blocked else self.first

    async def roots(
        self, index: int | None = None, wait: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        if index is not None:
            await anyio.sleep_forever()
        roots = [{"ID": "r1", "RootCert": self.roots_pem, "Active": True}]
        return 3, {"TrustDomain": "mesh.local", "ActiveRootID": "r1", "Roots": roots}


async def test_leaf_past_its_renewal_point_is_fetched_again(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    now = dt.datetime.now(dt.UTC)
    # Valid for 30 s, 20 s of it gone: the 2/3 point is now.
    ageing = pki.craft(
        "ageing",
        uris=(spiffe_id("web"),),
        not_before=now - dt.timedelta(seconds=20),
        not_after=now + dt.timedelta(seconds=10),
    )
    renewed = pki.issue("web")
    agent = ScriptedAgent(ageing, renewed, pki.root_cert)
    source = ConsulCaSource(agent, "web", LoopPolicy(wait=5))  # type: ignore[arg-type]

    tls = await source.load()
    assert tls.current.serial == ageing.serial
    installed = anyio.Event()
    install = tls.install

    def install_and_tell(pems: Pems) -> bool:
        installed.set()
        return install(pems)

    tls.install = install_and_tell  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(source.watch)
        with anyio.fail_after(5):
            await installed.wait()
        tg.cancel_scope.cancel()
    assert tls.current.serial == renewed.serial
    assert agent.watch_blocked
    assert tls.identity == spiffe_id("web")
    assert tls.reloads == 1
