"""An upstream listener whose protocol discovery decides, connection by connection.

With Consul, a service says it is TCP through its service Meta `protocol=tcp` (its sidecar
registers that when `app_protocol: tcp`). A caller's upstream left without a `protocol`
then follows the service: each new connection becomes an HTTP/1.1 connection, or a TCP
tunnel when the service's endpoints say tcp. The choice is made per accepted connection
(never per request) and cached per discovery answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mesh.cluster import Cluster
from mesh.http1.server import ConnectionTracker
from mesh.policy import HttpLimits
from mesh.tcp.listener import TcpTracker

PROTOCOL_META = "protocol"


class ServiceProtocol:
    """Whether a cluster's current endpoints declare TCP; recomputed when they change."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._states: object = None
        self._tcp = False

    def is_tcp(self) -> bool:
        states = self.cluster.states
        if states is not self._states:  # a discovery answer replaces the tuple
            self._states = states
            self._tcp = any((PROTOCOL_META, "tcp") in state.endpoint.meta for state in states)
        return self._tcp


class EitherTracker:
    """One listener's HTTP connections and TCP tunnels, seen by the sidecar as one tracker."""

    def __init__(self, http: ConnectionTracker, tcp: TcpTracker) -> None:
        self.http = http
        self.tcp = tcp
        self.name = http.name

    @property
    def limits(self) -> HttpLimits:
        return self.http.limits

    @limits.setter
    def limits(self, limits: HttpLimits) -> None:  # a config reload
        self.http.limits = limits
        self.tcp.limits = limits

    @property
    def refused_identity(self) -> int:
        return self.http.refused_identity + self.tcp.refused_identity

    def statistics(self) -> dict[str, object]:
        """The listener's counts (HTTP connections and tunnels together), and the tunnels'
        own under "tcp"."""
        tcp = self.tcp.statistics()
        merged: dict[str, object] = {}
        for key, value in self.http.statistics().items():
            other = tcp.get(key)
            counts = isinstance(value, int) and isinstance(other, int)
            if counts and not isinstance(value, bool):
                merged[key] = int(value) + int(other or 0)  # counts add up; flags do not
            else:
                merged[key] = value
        merged["tcp"] = tcp
        return merged

    async def sweep_forever(self) -> None:
        await self.http.sweep_forever()

    def start_drain(self) -> None:
        self.http.start_drain()
        self.tcp.start_drain()

    async def wait_empty(self) -> None:
        await self.http.wait_empty()
        await self.tcp.wait_empty()

    def abort_all(self) -> int:
        return self.http.abort_all() + self.tcp.abort_all()


def either(
    protocol: ServiceProtocol,
    http: Callable[[], asyncio.Protocol],
    tcp: Callable[[], asyncio.Protocol],
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory choosing, per connection, by the service's declared protocol."""
    return lambda: tcp() if protocol.is_tcp() else http()
