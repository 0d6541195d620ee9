"""ConsulResolver against a real Consul agent: what a watch sees as instances come and go,
turn critical, and as the agent itself stops, restarts as a new cluster, and comes back."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest

from discovery.blocking import LoopPolicy, default_backoff
from discovery.consul import ConsulResolver
from discovery.consul_client import AsyncConsul
from discovery.registration import CheckPolicy, Instance, definitions
from tests.discovery.test_consul_faults import Watch, until
from tests.support.consul_agent import ConsulAgent

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(40)]

POLICY = LoopPolicy(wait=2.0, rate=20.0, backoff=default_backoff(max_wait=0.3))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def instance(service: str, port: int, address: str = "127.0.0.1", weight: int = 1) -> Instance:
    return Instance(service, f"{service}-{port}", address, port, "127.0.0.1", port + 1000,
                    weight=weight)  # fmt: skip


async def register(consul: AsyncConsul, inst: Instance, status: str = "passing") -> None:
    for definition in definitions(inst, CheckPolicy(ttl=60), status):
        await consul.service_register(definition)


async def watch_in(tg: Any, consul: AsyncConsul, service: str) -> Watch:
    watch = Watch(ConsulResolver(consul, POLICY))

    async def run() -> None:
        async for endpoint_set in watch.resolver.watch(service):
            watch.seen.append(endpoint_set)

    tg.start_soon(run)
    return watch


async def test_watch_follows_instances_and_their_health(consul_agent: ConsulAgent) -> None:
    service = unique("pay")
    async with (
        AsyncConsul.from_url(consul_agent.http_addr) as consul,
        anyio.create_task_group() as tg,
    ):
        _, roots = await consul.roots()
        identity = f"spiffe://{roots['TrustDomain']}/ns/default/dc/dc1/svc/{service}"
        watch = await watch_in(tg, consul, service)
        # No instance yet: an authoritative empty answer.
        await until(lambda: bool(watch.seen), "the first answer")
        assert watch.last.endpoints == ()

        first, second = instance(service, 21001, weight=3), instance(service, 21002, address="")
        await register(consul, first)
        await register(consul, second)
        await until(lambda: sorted(watch.ports()) == [21001, 21002], "both instances")
        by_port = {e.port: e for e in watch.last.endpoints}
        assert by_port[21001].weight == 3 and by_port[21002].weight == 1
        # Registered without an address: reached at the node's address.
        assert by_port[21002].host == "127.0.0.1"
        assert {e.identity for e in watch.last.endpoints} == {identity}
        assert int(watch.last.version) >= 1

        # Critical (the sidecar's probe failed): out of the passing set at once.
        await consul.check_update(f"service:{first.proxy_id}", "critical", "app down")
        await until(lambda: watch.ports() == [21002], "the critical instance to go")
        await consul.check_update(f"service:{first.proxy_id}", "passing", "app up")
        await until(lambda: sorted(watch.ports()) == [21001, 21002], "it to come back")

        # Maintenance (how a draining sidecar leaves) and deregistration.
        await consul.agent.service.maintenance(second.proxy_id, True, "draining")
        await until(lambda: watch.ports() == [21001], "the instance in maintenance to go")
        for inst in (first, second):
            await consul.agent.service.deregister(inst.proxy_id)
            await consul.agent.service.deregister(inst.service_id)
        await until(lambda: watch.ports() == [], "deregistration")
        assert all(s.stale_since is None for s in watch.seen)
        tg.cancel_scope.cancel()


async def test_agent_stop_keeps_endpoints_and_a_new_cluster_is_followed(
    consul_binary: str,
) -> None:
    service = unique("web")
    with ConsulAgent(consul_binary) as agent:
        async with (
            AsyncConsul.from_url(agent.http_addr, connect_timeout=1, request_timeout=2) as consul,
            anyio.create_task_group() as tg,
        ):
            _, roots = await consul.roots()
            await register(consul, instance(service, 21001))
            watch = await watch_in(tg, consul, service)
            await until(lambda: bool(watch.seen) and watch.ports() == [21001], "the instance")
            old = watch.last

            agent.stop()
            await until(lambda: watch.last.stale_since is not None, "staleness")
            assert watch.last.endpoints == old.endpoints
            assert "ConnectError" in watch.last.last_error, watch.last.last_error

            # Dev mode comes back as a new cluster: new trust domain, indexes start low again
            # (a real "index went backwards"). Its own service definitions are persisted, but
            # their TTL checks start critical until someone reports (a sidecar's keeper does).
            agent.start()
            await until(lambda: watch.last.stale_since is None, "fresh answers", within=15)
            assert watch.last.endpoints == ()
            await consul.check_update(f"service:{service}-21001-sidecar-proxy", "passing")
            _, new_roots = await consul.roots()
            assert new_roots["TrustDomain"] != roots["TrustDomain"]
            expected = f"spiffe://{new_roots['TrustDomain']}/ns/default/dc/dc1/svc/{service}"
            await until(
                lambda: [e.identity for e in watch.last.endpoints] == [expected],
                "identities in the new trust domain",
            )
            # And the watch is live again: a new instance is seen.
            await register(consul, instance(service, 21002))
            await until(lambda: sorted(watch.ports()) == [21001, 21002], "the new instance")
            tg.cancel_scope.cancel()
