"""The ingress gateway process: a sidecar whose public side is a route table.

Everything else is the sidecar's: discovery (static catalog or Consul), one upstream stack
per service (deadline, retries with budget, breakers, outlier ejection, bulkhead: whatever
`stacks.upstream_stack` composes), mTLS to the mesh under the gateway's own identity (so the
upstream sidecars' authorization decides what it may reach), the admin API, drain on
SIGTERM. The gateway adds its outside
listeners (HTTP, and HTTPS with its own certificate, no client certificate asked) and its
route stacks, and is ready once every route's service has been discovered and every JWT
provider's keys have loaded.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from discovery.resolver import Resolver
from mesh.gateway.api_keys import ApiKeyAuthenticate, ApiKeyError, load_keys
from mesh.gateway.cache import Cache, ResponseStore
from mesh.gateway.compress import Compress
from mesh.gateway.config import RouteConfig
from mesh.gateway.jwks import KeySet
from mesh.gateway.jwt_auth import JwtAuthenticate
from mesh.gateway.ratelimit import RateLimit
from mesh.gateway.routes import GatewayRoute, PrefixRewrite, RouteEntry, RouteTable
from mesh.layers.deadline import Deadline
from mesh.stack import Handler, LayerFactory, compose
from sidecar import stacks
from sidecar.config import ConfigError
from sidecar.gateway_config import GatewayConfig
from sidecar.runtime import Hooks, Sidecar

log = logging.getLogger("sidecar.gateway")


def public_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """For outside clients: TLS 1.2+, forward-secret AEAD suites, no client certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(cert, key)
    return context


class PublicCertificate:
    """The certificate outside clients see, re-read when its files change (renewals).

    A new pair is tried on a scratch context first: a half-written or mismatched pair is
    refused with a log line and the listener keeps the old one.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = str(cert), str(key)
        self.context = public_tls_context(self.cert, self.key)
        self._stamp = self._files_stamp()
        self.reloads = 0
        self.last_error = ""

    def _files_stamp(self) -> tuple[int, ...]:
        stats = [os.stat(self.cert), os.stat(self.key)]
        return tuple(n for st in stats for n in (st.st_mtime_ns, st.st_size, st.st_ino))

    def reload_if_changed(self) -> None:
        try:
            stamp = self._files_stamp()
        except OSError:
            return  # mid-replacement; look again next time
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            public_tls_context(self.cert, self.key)
            self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            self.last_error = str(exc)
            log.warning(
                "public certificate %s: not reloaded (%s); keeping the old one", self.cert, exc
            )
            return
        self.reloads += 1
        self.last_error = ""
        log.info("public certificate %s reloaded", self.cert)

    async def watch(self) -> None:
        while True:
            await anyio.sleep(1.0)
            self.reload_if_changed()


class Gateway(Sidecar):
    config: GatewayConfig

    def __init__(
        self,
        config: GatewayConfig,
        resolver: Resolver | None = None,
        hooks: Sequence[Hooks] = (),
    ) -> None:
        super().__init__(config, resolver, hooks)
        self.key_sets = {name: KeySet(name, p) for name, p in config.jwt_providers.items()}
        self.api_keys = {name: load_keys(p) for name, p in config.api_keys.items()}
        self.cache = ResponseStore(config.cache.max_bytes, config.cache.max_entry_bytes)
        self.route_stacks: dict[str, Handler] = {}
        self.public_certificate: PublicCertificate | None = None

    def _reserve_own_ports(self) -> None:
        super()._reserve_own_ports()
        ingress = self.config.ingress
        for address in (ingress.listen, ingress.https.listen if ingress.https else None):
            if address is not None and int(address.rsplit(":", 1)[1]):
                self._own_ports.add(int(address.rsplit(":", 1)[1]))

    def route_stack(self, index: int, route: RouteConfig) -> Handler:
        """One route's layers, outermost first, ending in its service's upstream stack."""
        config = self.config
        assert self.services is not None
        name = route.name or f"route-{index}"
        layers: list[LayerFactory] = []
        auth = route.auth
        if auth.kind == "jwt":
            keys = self.key_sets[auth.name]
            layers.append(lambda inner: JwtAuthenticate(inner, keys, name))
        elif auth.kind == "api_key":
            key_set, digests = config.api_keys[auth.name], self.api_keys[auth.name]
            layers.append(lambda inner: ApiKeyAuthenticate(inner, key_set, digests, name))
        limit = route.rate_limit
        if limit is not None:
            layers.append(lambda inner: RateLimit(inner, limit, name))
        if route.compress:
            layers.append(lambda inner: Compress(inner, config.compression))
        if route.cache and config.cache.max_bytes > 0:
            authenticated = auth.kind != "public"
            layers.append(lambda inner: Cache(inner, self.cache, authenticated))
        rewrite = route.rewrite
        if rewrite is not None:
            prefix = route.prefix
            layers.append(lambda inner: PrefixRewrite(inner, prefix, rewrite))
        if route.timeout is not None:
            timeout = route.timeout
            layers.append(lambda inner: Deadline(inner, timeout))
        return compose(self.services.stack(route.service), layers)

    def reserved_headers(self) -> frozenset[bytes]:
        """Headers only the gateway sets from verified credentials."""
        names = {
            h for p in self.config.jwt_providers.values() for h in p.claims_to_headers.values()
        }
        names |= {s.consumer_header for s in self.config.api_keys.values()}
        return frozenset(n.encode() for n in names)

    async def _add_listeners(self) -> None:
        config = self.config
        for keys in self.key_sets.values():
            self._spawn(keys.run)
        entries = []
        for index, route in enumerate(config.routes):
            stack = self.route_stack(index, route)
            name = route.name or f"route-{index}"
            self.route_stacks[name] = stack
            prefix = route.prefix if route.case_sensitive else route.prefix.lower()
            entries.append(
                RouteEntry(name, route.hosts, prefix.encode(), route.case_sensitive, stack)
            )
        handler = stacks.gateway_stack(
            config, GatewayRoute(RouteTable(entries), self.reserved_headers())
        )
        ingress = config.ingress
        if ingress.listen is not None:
            await self._listen("gateway", "inbound", ingress.listen, handler)
        if ingress.https is not None:
            https = ingress.https
            self.public_certificate = PublicCertificate(https.cert, https.key)
            self._spawn(self.public_certificate.watch)
            await self._listen(
                "gateway-https", "inbound", https.listen, handler, self.public_certificate.context
            )

    def readiness(self, include_app: bool = True) -> tuple[bool, str]:
        ready, why = super().readiness(include_app)
        if not ready:
            return ready, why
        waiting = [name for name, keys in self.key_sets.items() if not keys.loaded]
        if waiting:
            return False, "waiting for JWT keys: " + ", ".join(sorted(waiting))
        return True, "ok"

    def gateway_snapshot(self) -> dict[str, Any]:
        routes = []
        for i, route in enumerate(self.config.routes):
            name = route.name or f"route-{i}"
            routes.append(
                {
                    "name": name,
                    "hosts": list(route.hosts),
                    "prefix": route.prefix,
                    "service": route.service,
                    "auth": route.auth.kind,
                    "layers": _layer_statistics(self.route_stacks.get(name)),
                }
            )
        return {
            "routes": routes,
            "jwks": {name: keys.statistics() for name, keys in self.key_sets.items()},
            "cache": self.cache.statistics(),
            "public_certificate": None
            if self.public_certificate is None
            else {
                "reloads": self.public_certificate.reloads,
                "last_error": self.public_certificate.last_error or None,
            },
        }


def _layer_statistics(stack: Handler | None) -> dict[str, Any]:
    """The route's own layers by class name, with their statistics where they keep some;
    the walk stops at the service's stack (shown on /clusters)."""
    found: dict[str, Any] = {}
    current: object | None = stack
    while current is not None and type(current).__module__.startswith("mesh.gateway"):
        stats = getattr(current, "statistics", None)
        found[type(current).__name__] = stats() if callable(stats) else {}
        current = getattr(current, "inner", None)
    return found


def make_gateway(config: GatewayConfig) -> Gateway:
    """A gateway with the discovery source its config names (static catalog or Consul)."""
    try:
        if config.consul.address is None:
            return Gateway(config)
        from sidecar.consul_wiring import ConsulHooks

        hooks = ConsulHooks(config)
        return Gateway(config, hooks.resolver, [hooks])
    except ApiKeyError as exc:
        raise ConfigError(str(exc)) from None


async def serve_gateway_until_signal(config: GatewayConfig) -> None:
    from sidecar.signals import stop_on_signals

    gateway = make_gateway(config)
    async with anyio.create_task_group() as tg:
        await tg.start(stop_on_signals, gateway.request_stop)
        await tg.start(gateway.serve)
        log.info("gateway ready")
        await gateway.wait_stopped()
        tg.cancel_scope.cancel()
