"""Discovery through a Consul agent: each upstream's mesh-capable instances, as they change.

`ConsulResolver.watch(service)` runs a blocking query on `/v1/health/connect/<service>?passing`
(the passing sidecar proxies of that service) under Consul's rules (discovery/blocking.py).
An endpoint's identity is the service's SPIFFE ID in the agent's trust domain and datacenter;
its weight is the instance's `Weights.Passing`.

Failures never clear endpoints: when the agent is unreachable, hangs, errs or sends garbage,
the last good answer stays in use and is sent again marked stale (`stale_since`,
`last_error`, shown on /clusters), and the loop backs off with jitter. Before the first good
answer nothing is yielded, so the sidecar is not ready and requests get a fast 503.

`knows(service)` answers from a watched `/v1/catalog/services` (`watch_catalog`); it is None
until the catalog has first answered.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from discovery.blocking import LoopPolicy, blocking_answers
from discovery.consul_client import AsyncConsul, ConsulBadResponse, ConsulFailure
from discovery.consul_entries import endpoint_set
from discovery.endpoint import EndpointSet

log = logging.getLogger("discovery.consul")

#: While failing, the warning is repeated this often (each failure is logged at debug).
REMIND_EVERY = 60.0


@dataclass(frozen=True)
class IdentityFacts:
    """What an endpoint's SPIFFE ID is made of, besides the service name."""

    trust_domain: str
    datacenter: str


class ConsulResolver:
    def __init__(
        self,
        consul: AsyncConsul,
        policy: LoopPolicy | None = None,
        *,
        max_endpoints: int = 5000,
    ) -> None:
        self._consul = consul
        self.policy = policy or LoopPolicy()
        self.max_endpoints = max_endpoints
        self._facts: IdentityFacts | None = None
        self._lock = anyio.Lock()
        self._services: frozenset[str] | None = None

    def __repr__(self) -> str:
        return f"<ConsulResolver {self._consul.http.base_uri}>"

    @property
    def catalog_answered(self) -> bool:
        return self._services is not None

    def knows(self, service: str) -> bool | None:
        if self._services is None:
            return None
        return service in self._services

    async def identity_facts(self, refresh: bool = False) -> IdentityFacts:
        """The agent's trust domain and datacenter, fetched again when *refresh*."""
        async with self._lock:
            if self._facts is None or refresh:
                _, roots = await self._consul.roots()
                agent = await self._consul.agent.self()
                config = agent.get("Config") if isinstance(agent, Mapping) else None
                datacenter = config.get("Datacenter") if isinstance(config, Mapping) else None
                if not isinstance(datacenter, str) or not datacenter:
                    raise ConsulBadResponse("/v1/agent/self: no Config.Datacenter")
                if not roots["TrustDomain"]:
                    raise ConsulBadResponse("CA roots without a TrustDomain: is Connect on?")
                # SPIFFE trust domains are lowercase; Consul's is "<cluster id>.consul".
                facts = IdentityFacts(roots["TrustDomain"].lower(), datacenter)
                if self._facts is not None and facts != self._facts:
                    log.info("consul: identities now %s in %s", facts.trust_domain, datacenter)
                self._facts = facts
            return self._facts

    async def watch(self, service: str) -> AsyncIterator[EndpointSet]:
        policy = self.policy

        async def query(index: int | None) -> tuple[int, Any]:
            return await self._consul.health_connect(service, index, policy.wait)

        async def build(entries: Any, restart: bool) -> EndpointSet:
            facts = await self.identity_facts(refresh=restart)
            return endpoint_set(
                service,
                entries,
                trust_domain=facts.trust_domain,
                datacenter=facts.datacenter,
                max_endpoints=self.max_endpoints,
            )

        last: EndpointSet | None = None
        failing = _Failing(f"consul: {service}")
        async for result in blocking_answers(query, build, policy):
            if isinstance(result, ConsulFailure):
                kept = f"keeping {len(last.endpoints)} last known endpoint(s)" if last else ""
                failing.failed(result, kept or "no answer yet")
                if last is not None and last.stale_since is None:
                    last = dataclasses.replace(
                        last, stale_since=time.time(), last_error=str(result)
                    )
                    yield last
                continue
            failing.recovered()
            fresh = dataclasses.replace(result.value, version=str(result.index))
            if last is None or _shown(fresh) != _shown(last):
                last = fresh
                yield fresh

    async def watch_catalog(self) -> None:
        """Keep the set of service names `knows` answers from; runs until cancelled."""

        async def query(index: int | None) -> tuple[int, Any]:
            return await self._consul.catalog_services(index, self.policy.wait)

        async def build(services: dict[str, Any], restart: bool) -> frozenset[str]:
            return frozenset(services)

        failing = _Failing("consul: catalog")
        async for result in blocking_answers(query, build, self.policy):
            if isinstance(result, ConsulFailure):
                failing.failed(result, "keeping the last known services")
                continue
            failing.recovered()
            self._services = result.value


def _shown(endpoints: EndpointSet) -> tuple[object, ...]:
    # What a change is: the usable endpoints, the refusals, and whether they are stale.
    return endpoints.endpoints, endpoints.rejected, endpoints.stale_since is None


class _Failing:
    """Logs a failing loop without flooding: its start, a reminder now and then, its end."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None
        self._reminded = 0.0

    def failed(self, error: ConsulFailure, consequence: str) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = self._reminded = now
            log.warning("%s: %s; %s", self.what, error, consequence)
        elif now - self._reminded >= REMIND_EVERY:
            self._reminded = now
            log.warning(
                "%s: failing for %.0fs: %s; %s", self.what, now - self.since, error, consequence
            )
        else:
            log.debug("%s: %s", self.what, error)

    def recovered(self) -> None:
        if self.since is not None:
            log.info("%s: answering again after %.1fs", self.what, time.monotonic() - self.since)
            self.since = None
