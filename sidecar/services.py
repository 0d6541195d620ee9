"""Upstream services known to this sidecar: a cluster, its stack and its discovery watch each.

A service's stack is built the first time it is needed (config naming it, or a proxy-mode
request for a service discovery knows) and kept; discovery updates only swap endpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from discovery.endpoint import Endpoint
from discovery.resolver import Resolver
from mesh.cluster import Cluster, PoolFactory
from mesh.errors import NoEndpoints
from mesh.http1.pool import EndpointPool
from mesh.stack import Handler

log = logging.getLogger("sidecar.services")


class Upstream(Protocol):
    """One service's stack as built by `stacks.upstream_stack`."""

    @property
    def handler(self) -> Handler: ...

    def adopt(self, pool: EndpointPool) -> EndpointPool: ...

    def refresh(self) -> None: ...

    def statistics(self) -> dict[str, Any]: ...


StackBuilder = Callable[[Cluster], Upstream]
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


class Services:
    def __init__(
        self,
        resolver: Resolver,
        pool_factory: PoolFactory,
        is_self: Callable[[Endpoint], bool],
        build_stack: StackBuilder,
        spawn: Spawn,
    ) -> None:
        self._resolver = resolver
        self._pool_factory = pool_factory
        self._is_self = is_self
        self._build_stack = build_stack
        self._spawn = spawn
        self.clusters: dict[str, Cluster] = {}
        self.upstreams: dict[str, Upstream] = {}
        self._stacks: dict[str, Handler] = {}

    def knows(self, service: str) -> bool:
        if service in self._stacks:
            return True
        known = self._resolver.knows(service)
        if known is None:
            # Neither a mesh service nor passthrough until discovery can tell: sending a
            # mesh name to its "real" address would leave the mesh.
            raise NoEndpoints(f"discovery cannot tell yet whether {service!r} is a mesh service")
        return known

    def stack(self, service: str) -> Handler:
        stack = self._stacks.get(service)
        if stack is None:
            upstream: Upstream | None = None

            def pools(endpoint: Endpoint) -> EndpointPool:
                pool = self._pool_factory(endpoint)
                return upstream.adopt(pool) if upstream is not None else pool

            cluster = Cluster(service, pools, self._is_self)
            self.clusters[service] = cluster
            upstream = self.upstreams[service] = self._build_stack(cluster)
            stack = self._stacks[service] = upstream.handler
            self._spawn(lambda: self._watch(cluster))
        return stack

    def recheck(self) -> None:
        for cluster in self.clusters.values():
            cluster.recheck()

    def all_answered(self) -> bool:
        return all(c.answered for c in self.clusters.values())

    async def _watch(self, cluster: Cluster) -> None:
        async for endpoint_set in self._resolver.watch(cluster.name):
            cluster.update(endpoint_set)
            self.upstreams[cluster.name].refresh()
            log.info(
                "discovery: %s has %d endpoint(s)%s",
                cluster.name,
                len(cluster.states),
                f", {len(cluster.rejected)} rejected" if cluster.rejected else "",
            )

    def close(self) -> None:
        for cluster in self.clusters.values():
            cluster.close()
