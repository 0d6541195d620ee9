"""Static discovery from a YAML or JSON catalog file.

    services:
      payments: ["127.0.0.1:21001", "127.0.0.1:21002"]
      users:
        - address: 127.0.0.1:21003
          identity: spiffe://mesh.local/ns/default/dc/dc1/svc/users
          weight: 2

By default an endpoint's identity is that of the service it is listed under. The file is
re-read when it changes, so an operator can move endpoints without a restart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import yaml

from discovery.endpoint import DEFAULT_TRUST_DOMAIN, Endpoint, EndpointSet, service_identity

log = logging.getLogger("discovery.static")


class CatalogError(ValueError):
    """The catalog file is unreadable or malformed; the message names the entry."""


def parse_address(text: str, where: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise CatalogError(f"{where}: {text!r} is not HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host, int(port)


def parse_catalog(data: Any, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> dict[str, EndpointSet]:
    if not isinstance(data, Mapping) or not isinstance(data.get("services"), Mapping):
        raise CatalogError("catalog: expected a mapping with a 'services' mapping")
    catalog: dict[str, EndpointSet] = {}
    for name, entries in data["services"].items():
        if not isinstance(name, str) or not name:
            raise CatalogError(f"services: invalid service name {name!r}")
        if not isinstance(entries, list):
            raise CatalogError(f"services.{name}: expected a list of endpoints")
        endpoints: list[Endpoint] = []
        rejected: list[tuple[str, str]] = []
        for i, entry in enumerate(entries):
            where = f"services.{name}[{i}]"
            if isinstance(entry, str):
                address, identity, weight = entry, service_identity(name, trust_domain), 1
            elif isinstance(entry, Mapping) and isinstance(entry.get("address"), str):
                address = entry["address"]
                identity = entry.get("identity") or service_identity(name, trust_domain)
                weight = entry.get("weight", 1)
                if not isinstance(weight, int) or weight < 1:
                    raise CatalogError(f"{where}.weight: expected a positive integer")
            else:
                raise CatalogError(f"{where}: expected 'HOST:PORT' or a mapping with 'address'")
            host, port = parse_address(address, where)
            endpoint = Endpoint(host, port, str(identity), weight)
            problem = endpoint.problem()
            if problem:
                rejected.append((address, problem))
                log.warning("catalog %s: ignoring %s: %s", where, address, problem)
            else:
                endpoints.append(endpoint)
        catalog[name] = EndpointSet(name, tuple(endpoints), rejected=tuple(rejected))
    return catalog


def load_catalog(path: Path, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> dict[str, EndpointSet]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogError(f"catalog {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise CatalogError(
            f"catalog {path}: not valid {path.suffix[1:] or 'YAML'}: {exc}"
        ) from None
    return parse_catalog(data, trust_domain)


class StaticResolver:
    """Endpoints from a catalog file (or a mapping), re-read when the file changes."""

    def __init__(
        self,
        catalog: Mapping[str, EndpointSet],
        path: Path | None = None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        poll_interval: float = 1.0,
    ) -> None:
        self._catalog = dict(catalog)
        self._path = path
        self._trust_domain = trust_domain
        self._poll = poll_interval
        self._mtime = path.stat().st_mtime_ns if path else 0

    @classmethod
    def from_file(cls, path: Path, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> StaticResolver:
        return cls(load_catalog(path, trust_domain), path, trust_domain)

    def knows(self, service: str) -> bool:
        return service in self._catalog

    def _reload_if_changed(self) -> None:
        if self._path is None:
            return
        try:
            mtime = self._path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            self._catalog = load_catalog(self._path, self._trust_domain)
        except CatalogError as exc:
            log.error("keeping the previous catalog: %s", exc)

    async def watch(self, service: str) -> AsyncIterator[EndpointSet]:
        current = self._catalog.get(service, EndpointSet(service))
        yield current
        if self._path is None:
            await anyio.sleep_forever()
        while True:
            await anyio.sleep(self._poll)
            self._reload_if_changed()
            latest = self._catalog.get(service, EndpointSet(service))
            if latest != current:
                current = latest
                yield current
