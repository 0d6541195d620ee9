"""This instance in Consul: the app's service and its sidecar proxy, registered and kept so.

    <service>                 ID <service-id>                 Port: the app's port
    <service>-sidecar-proxy   ID <service-id>-sidecar-proxy   Port: the sidecar's public port
        Kind connect-proxy, Proxy {DestinationServiceName/ID, LocalServiceAddress/Port,
        Upstreams [{DestinationName, LocalBindAddress, LocalBindPort}]}, Weights

Health: each registration carries a TTL check that the sidecar feeds with its own probe of
the app (app_probe.py), so the checks say "the app answers, seen from its sidecar" and go
critical on their own when the sidecar dies (the TTL runs out). Consul does not have to reach
the app (which listens on loopback, maybe in another network namespace than the agent), and
a probe result reaches peers at once instead of at Consul's next check interval. Both checks
carry DeregisterCriticalServiceAfter, so an instance whose sidecar vanished is reaped.

`keep()` registers, probes the app every interval and reports to both checks; any failure
(agent down, or an agent that restarted without our definitions and rejects the update)
means: register again once it answers, with jittered backoff meanwhile. `leave()` stops
that and puts both services in maintenance, which drops them from every `?passing` query at
once; `deregister()` removes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus
from tenacity.wait import wait_base

from discovery.app_probe import PASSING, AppProbe, ProbeResult
from discovery.blocking import Backoff, default_backoff
from discovery.consul_client import AsyncConsul, ConsulFailure

log = logging.getLogger("discovery.registration")

#: Probe interval until the app has first passed, so a new instance joins quickly.
STARTING_INTERVAL = 0.1
#: Bound on each call made while leaving, so a hung agent cannot hold the shutdown.
LEAVE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Upstream:
    name: str
    local_port: int
    local_address: str = "127.0.0.1"


@dataclass(frozen=True)
class Instance:
    service: str
    service_id: str
    #: Where peers reach the sidecar; "" lets Consul use the agent's node address.
    address: str
    #: The sidecar's public (inbound) port.
    port: int
    app_host: str
    app_port: int
    upstreams: tuple[Upstream, ...] = ()
    tags: tuple[str, ...] = ()
    weight: int = 1
    #: Service Meta of both registrations (e.g. `mesh-policy`, how callers should call it).
    meta: tuple[tuple[str, str], ...] = ()

    @property
    def proxy_id(self) -> str:
        return f"{self.service_id}-sidecar-proxy"

    @property
    def proxy_name(self) -> str:
        return f"{self.service}-sidecar-proxy"


@dataclass(frozen=True)
class CheckPolicy:
    interval: float = 2.0
    ttl: float = 10.0
    #: Consul's minimum is one minute (its reaper runs every 30 s).
    deregister_after: float = 60.0


def check_id(service_id: str) -> str:
    """Consul's own ID for a registration's check."""
    return f"service:{service_id}"


def go_duration(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def _ttl_check(service_id: str, what: str, policy: CheckPolicy, status: str) -> dict[str, Any]:
    return {
        "CheckID": check_id(service_id),
        "Name": what,
        "TTL": go_duration(policy.ttl),
        "Status": status,
        "DeregisterCriticalServiceAfter": go_duration(policy.deregister_after),
    }


def definitions(
    instance: Instance, policy: CheckPolicy, status: str = "critical"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The agent registration bodies: (the app's service, its sidecar proxy)."""
    weights = {"Passing": instance.weight, "Warning": 1}
    address = {"Address": instance.address} if instance.address else {}
    app = {
        "Name": instance.service,
        "ID": instance.service_id,
        **address,
        "Port": instance.app_port,
        "Tags": list(instance.tags),
        "Meta": dict(instance.meta),
        "Weights": weights,
        "Check": _ttl_check(instance.service_id, "app probed by its sidecar", policy, status),
    }
    proxy = {
        "Kind": "connect-proxy",
        "Name": instance.proxy_name,
        "ID": instance.proxy_id,
        **address,
        "Port": instance.port,
        "Tags": list(instance.tags),
        "Meta": dict(instance.meta),
        "Weights": weights,
        "Proxy": {
            "DestinationServiceName": instance.service,
            "DestinationServiceID": instance.service_id,
            "LocalServiceAddress": instance.app_host,
            "LocalServicePort": instance.app_port,
            "Upstreams": [
                {
                    "DestinationName": u.name,
                    "LocalBindAddress": u.local_address,
                    "LocalBindPort": u.local_port,
                }
                for u in instance.upstreams
            ],
        },
        "Check": _ttl_check(instance.proxy_id, "sidecar and its app", policy, status),
    }
    return app, proxy


class Registration:
    def __init__(
        self,
        consul: AsyncConsul,
        instance: Instance,
        probe: AppProbe,
        policy: CheckPolicy | None = None,
        backoff: wait_base | None = None,
    ) -> None:
        self._consul = consul
        self.instance = instance
        self.policy = policy or CheckPolicy()
        self._probe = probe
        self._backoff = backoff or default_backoff()
        self.registered = False
        self.reported: ProbeResult | None = None
        self._reported_at = 0.0
        self.last_error = ""
        self._attempted = False
        self._leaving = False
        self._keeping: anyio.CancelScope | None = None
        self._kept = anyio.Event()

    async def keep(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Register, then report the app's health every interval; runs until `leave()`."""
        task_status.started()
        try:
            with anyio.CancelScope() as self._keeping:
                if self._leaving:
                    return
                await self._keep()
        finally:
            self._kept.set()

    async def _keep(self) -> None:
        backoff = Backoff(self._backoff)
        seen_passing = False
        while True:
            try:
                await self._report(await self._probe.check())
            except ConsulFailure as exc:
                # Whatever failed, the agent may have lost our definitions: register again.
                self.registered = False
                self.last_error = str(exc)
                log.log(
                    logging.WARNING if backoff.failures == 0 else logging.DEBUG,
                    "consul: keeping %s registered: %s",
                    self.instance.service_id,
                    exc,
                )
                await anyio.sleep(backoff.failed())
                continue
            backoff.succeeded()
            self.last_error = ""
            if self.reported is not None and self.reported.status == PASSING:
                seen_passing = True
            await anyio.sleep(self.policy.interval if seen_passing else STARTING_INTERVAL)

    async def _report(self, result: ProbeResult) -> None:
        instance = self.instance
        fresh_registration = not self.registered
        if fresh_registration:
            self._attempted = True
            app, proxy = definitions(instance, self.policy, result.status)
            await self._consul.service_register(app)
            await self._consul.service_register(proxy)
            self.registered = True
            log.info(
                "consul: registered %s and %s (port %d, app %s)",
                instance.service_id,
                instance.proxy_id,
                instance.port,
                result.status,
            )
        changed = result != self.reported
        if changed:
            log.info("consul: %s is %s: %s", instance.service_id, result.status, result.output)
        # Sent on a change, and every interval even when unchanged: that is what keeps the
        # TTL from running out (probes run faster than that while the app is starting).
        now = anyio.current_time()
        if changed or fresh_registration or now - self._reported_at >= self.policy.interval:
            for service_id in (instance.service_id, instance.proxy_id):
                await self._consul.check_update(check_id(service_id), result.status, result.output)
            self._reported_at = now
        self.reported = result

    async def _stop_keeping(self) -> None:
        self._leaving = True
        if self._keeping is not None:
            self._keeping.cancel()
            await self._kept.wait()

    async def leave(self, reason: str = "draining") -> bool:
        """Stop keeping, and take both services out of `?passing` answers (maintenance).

        True when Consul took it: only then is there a point in waiting for peers to notice.
        """
        await self._stop_keeping()
        if not self._attempted:
            return False
        try:
            with anyio.fail_after(LEAVE_TIMEOUT):
                # The proxy first: it is what peers' health/connect queries return.
                for service_id in (self.instance.proxy_id, self.instance.service_id):
                    await self._consul.agent.service.maintenance(service_id, True, reason)
        except (ConsulFailure, TimeoutError) as exc:
            log.warning("consul: could not mark %s as leaving: %s", self.instance.service_id, exc)
            return False
        log.info("consul: %s is in maintenance (%s)", self.instance.service_id, reason)
        return True

    async def deregister(self) -> None:
        """Remove both services (and their checks) from the agent."""
        await self._stop_keeping()
        if not self._attempted:
            return
        try:
            with anyio.fail_after(LEAVE_TIMEOUT):
                for service_id in (self.instance.proxy_id, self.instance.service_id):
                    await self._consul.agent.service.deregister(service_id)
        except (ConsulFailure, TimeoutError) as exc:
            # DeregisterCriticalServiceAfter removes them once their TTL has run out.
            log.warning("consul: could not deregister %s: %s", self.instance.service_id, exc)
            return
        self.registered = False
        log.info("consul: deregistered %s and %s", self.instance.service_id, self.instance.proxy_id)
