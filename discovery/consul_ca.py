"""Consul's Connect CA as this sidecar's certificate source.

The leaf comes from `/v1/agent/connect/ca/leaf/<service>` and the roots from
`/v1/agent/connect/ca/roots`, each watched with blocking queries (discovery/blocking.py).
A changed answer becomes new PEMs installed into the same `RotatingTls` the file source
uses: new handshakes take the new material, established connections carry on.

- Roots: every root Consul lists (the active one and those being retired) is trusted, so
  during a CA rotation a peer's leaf from either root verifies. After a rotation Consul
  sends the new leaf with the cross-signed intermediate, which chains to the old root too.
- Renewal: the agent renews leaves before they expire and the watch brings them; should
  the watch have missed it (agent restarted, answers lost), a timer at 2/3 of the leaf's
  validity asks again, and keeps asking until a new leaf comes.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import anyio

from discovery.blocking import Backoff, LoopPolicy, blocking_answers
from discovery.consul_client import AsyncConsul, ConsulFailure
from mesh.identity.errors import TlsConfigError
from mesh.identity.tls import Pems, RotatingTls

log = logging.getLogger("discovery.consul_ca")

#: After the renewal point, ask this often (at most) until a new leaf comes.
RENEW_RETRY = 30.0


class ConsulCaSource:
    """This service's leaf and the mesh roots from the local agent, kept current."""

    def __init__(self, consul: AsyncConsul, service: str, policy: LoopPolicy) -> None:
        self.consul = consul
        self.service = service
        self.policy = policy
        self.tls: RotatingTls | None = None
        self.trust_domain = ""
        self._leaf: dict[str, Any] = {}
        self._roots: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<ConsulCaSource {self.service} via {self.consul.http.base_uri}>"

    def _pems(self) -> Pems:
        roots = [r.get("RootCert") for r in self._roots.get("Roots") or ()]
        bundle = "".join(r if r.endswith("\n") else r + "\n" for r in roots if isinstance(r, str))
        return Pems(
            str(self._leaf["CertPEM"]).encode(),
            str(self._leaf["PrivateKeyPEM"]).encode(),
            bundle.encode(),
            f"consul leaf {self._leaf.get('SerialNumber')} for {self.service}",
        )

    async def load(self) -> RotatingTls:
        """The first leaf and roots; waits (with jittered backoff) until the agent gives them."""
        backoff = Backoff(self.policy.backoff)
        while True:
            try:
                _, self._leaf = await self.consul.leaf(self.service)
                _, self._roots = await self.consul.roots()
                self.trust_domain = str(self._roots["TrustDomain"]).lower()
                self.tls = RotatingTls(self._pems())
            except (ConsulFailure, TlsConfigError) as exc:
                if backoff.failures == 0:
                    log.warning("consul: no certificate for %s yet: %s", self.service, exc)
                await anyio.sleep(backoff.failed())
                continue
            log.info(
                "consul: certificate serial %x for %s",
                self.tls.current.serial,
                self.tls.identity,
            )
            return self.tls

    def _install(self) -> None:
        assert self.tls is not None
        self.tls.install(self._pems())

    async def watch(self) -> None:
        """Keep leaf and roots current; runs until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_leaf)
            tg.start_soon(self._watch_roots)
            tg.start_soon(self._renew_before_expiry)

    async def _watch_leaf(self) -> None:
        async def query(index: int | None) -> tuple[int, Any]:
            return await self.consul.leaf(self.service, index, self.policy.wait)

        async for result in blocking_answers(query, _as_is, self.policy):
            if isinstance(result, ConsulFailure):
                log.debug("consul: leaf for %s: %s", self.service, result)
                continue
            self._take_leaf(result.value)

    def _take_leaf(self, leaf: dict[str, Any]) -> bool:
        if leaf.get("CertPEM") == self._leaf.get("CertPEM"):
            return False
        log.info("consul: new leaf %s for %s", leaf.get("SerialNumber"), self.service)
        self._leaf = leaf
        self._install()
        return True

    async def _watch_roots(self) -> None:
        async def query(index: int | None) -> tuple[int, Any]:
            return await self.consul.roots(index, self.policy.wait)

        async for result in blocking_answers(query, _as_is, self.policy):
            if isinstance(result, ConsulFailure):
                log.debug("consul: CA roots: %s", result)
                continue
            roots = result.value
            if _root_certs(roots) == _root_certs(self._roots):
                continue
            log.info(
                "consul: CA roots now %s (active %s)",
                [r.get("ID") for r in roots.get("Roots") or ()],
                roots.get("ActiveRootID"),
            )
            self._roots = roots
            self._install()

    async def _renew_before_expiry(self) -> None:
        """If no new leaf has come by 2/3 of the current one's validity, ask for one."""
        assert self.tls is not None
        while True:
            left = (self.tls.renew_at() - dt.datetime.now(dt.UTC)).total_seconds()
            if left > 0:
                await anyio.sleep(min(left, 60.0))  # re-checked: a new leaf moves the point
                continue
            serial = self.tls.current.serial
            try:
                _, leaf = await self.consul.leaf(self.service)
                self._take_leaf(leaf)
            except ConsulFailure as exc:
                log.warning("consul: renewing the leaf for %s: %s", self.service, exc)
            if self.tls.current.serial == serial:
                expires = (self.tls.current.not_after - dt.datetime.now(dt.UTC)).total_seconds()
                log.warning(
                    "consul: the leaf for %s is past its renewal point and expires in %.0fs",
                    self.service,
                    expires,
                )
                await anyio.sleep(max(1.0, min(RENEW_RETRY, expires / 10)))


async def _as_is(data: Any, restart: bool) -> Any:
    return data


def _root_certs(roots: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(r.get("RootCert")) for r in roots.get("Roots") or ())
