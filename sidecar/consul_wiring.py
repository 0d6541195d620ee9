"""Consul mode: the resolver, registration and lifecycle hooks of a sidecar whose config sets
`consul.address` (`sidecar.assemble.make_sidecar` picks the source a config names).

The ACL token comes from `consul.token_file` (wins) or env CONSUL_HTTP_TOKEN; it lives only in
the client, which sends it as X-Consul-Token and never logs it.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from discovery.app_probe import AppProbe
from discovery.blocking import LoopPolicy, default_backoff
from discovery.consul import ConsulResolver
from discovery.consul_ca import ConsulCaSource
from discovery.consul_client import AsyncConsul
from discovery.consul_intentions import IntentionsAuthorizer, watch_intentions
from discovery.registration import CheckPolicy, Instance, Registration, Upstream
from sidecar.config import ConfigError, SidecarConfig
from sidecar.runtime import Sidecar

log = logging.getLogger("sidecar.consul")

_WILDCARDS = {"", "0.0.0.0", "::"}


def read_token(path: Path | None) -> str | None:
    """The token in *path* (surrounding whitespace removed); None without a file."""
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"consul.token_file {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"consul.token_file {path}: the file is empty")
    return token


def protocol_meta(config: SidecarConfig) -> dict[str, str]:
    """Meta `protocol=tcp` for a TCP app; an HTTP service registers as it always did."""
    return {"protocol": config.app_protocol} if config.app_protocol != "http" else {}


class ConsulHooks:
    """Watches the catalog (proxy mode), keeps this instance registered, and leaves Consul
    before the listeners close on shutdown."""

    def __init__(self, config: SidecarConfig) -> None:
        settings = config.consul
        assert settings.address is not None
        self.config = config
        self.consul = AsyncConsul.from_url(
            settings.address,
            token=read_token(settings.token_file),
            verify=str(settings.ca_file) if settings.ca_file else True,
            connect_timeout=settings.timeout,
            request_timeout=settings.timeout,
            # Each watched service holds one connection while its query blocks; Consul
            # allows 200 per client address by default (http_max_conns_per_client).
            max_connections=200,
            max_body=settings.max_response_bytes,
        )
        self.resolver = ConsulResolver(
            self.consul,
            LoopPolicy(wait=settings.wait, backoff=default_backoff(settings.backoff_max)),
            max_endpoints=settings.max_endpoints,
        )
        self.registration: Registration | None = None
        # mTLS with Consul: certificates from its CA when asked, intentions always decide.
        self.ca_source: ConsulCaSource | None = None
        self.intentions: IntentionsAuthorizer | None = None
        self._loop_policy = self.resolver.policy
        if config.tls is not None:
            if config.tls.source == "consul":
                self.ca_source = ConsulCaSource(self.consul, config.service, self._loop_policy)
            authorization = config.authorization
            default = None if authorization.default is None else authorization.default == "allow"
            self.intentions = IntentionsAuthorizer(
                config.service,
                allow=frozenset(authorization.allow),
                deny=frozenset(authorization.deny),
                default_allow=default,
            )
        # Proxy mode routes by host name: it needs to know every service's name.
        self._needs_catalog = config.proxy_port is not None

    def __repr__(self) -> str:
        return f"<ConsulHooks {self.consul.http.base_uri}>"

    def instance(self, sidecar: Sidecar) -> Instance | None:
        """This sidecar as Consul should know it; None when it has nothing to offer peers."""
        config, settings = self.config, self.config.consul
        if not settings.registration or config.listen is None or config.app_port is None:
            return None
        port = sidecar.port_of("inbound")
        host = config.listen.rpartition(":")[0].strip("[]")
        address = settings.advertise_address or ("" if host in _WILDCARDS else host)
        return Instance(
            service=config.service,
            service_id=settings.service_id or f"{config.service}-{socket.gethostname()}-{port}",
            address=address,
            port=port,
            app_host=config.app_host,
            app_port=config.app_port,
            upstreams=tuple(
                Upstream(u.name, u.local_port, u.local_address, u.protocol or "")
                for u in config.upstreams
            ),
            tags=settings.tags,
            weight=settings.weight,
            # A TCP app says so in its Meta: callers' upstreams follow it (mesh/tcp).
            meta=tuple(sorted({**settings.meta, **protocol_meta(config)}.items())),
        )

    async def run(self, sidecar: Sidecar, *, task_status: TaskStatus[None]) -> None:
        settings = self.config.consul
        instance = self.instance(sidecar)
        probe = None
        log.info("consul: discovery through %s", self.consul.http.base_uri)
        try:
            async with anyio.create_task_group() as tg:
                if self._needs_catalog:
                    tg.start_soon(self.resolver.watch_catalog)
                if self.intentions is not None:
                    tg.start_soon(watch_intentions, self.consul, self.intentions, self._loop_policy)
                if instance is not None:
                    probe = AppProbe(
                        instance.app_host,
                        instance.app_port,
                        settings.check_path,
                        timeout=min(2.0, settings.check_interval),
                    )
                    policy = CheckPolicy(
                        settings.check_interval,
                        settings.check_ttl,
                        settings.deregister_critical_after,
                    )
                    self.registration = Registration(
                        self.consul, instance, probe, policy, default_backoff(settings.backoff_max)
                    )
                    await tg.start(self.registration.keep)
                task_status.started()
                # The client serves the watches, and leaving and deregistering after the
                # keeper has stopped: it closes only when the sidecar cancels this at exit.
                await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                if probe is not None:
                    await probe.aclose()
                await self.consul.aclose()

    def waiting_for(self) -> str:
        if self._needs_catalog and not self.resolver.catalog_answered:
            return "waiting for the consul catalog"
        if self.intentions is not None and not self.intentions.answered:
            return "waiting for consul intentions"
        return ""

    async def before_drain(self) -> None:
        if self.registration is None or not await self.registration.leave():
            return
        grace = self.config.consul.drain_grace
        if grace > 0:
            # Peers' blocking queries wake on the change; this covers their agents' sync and
            # their rate limit. The listeners keep serving meanwhile.
            log.info("consul: waiting %gs for peers to drop this instance", grace)
            await anyio.sleep(grace)

    async def after_drain(self) -> None:
        if self.registration is not None:
            await self.registration.deregister()
