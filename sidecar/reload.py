"""Config reload (SIGHUP, or POST /reload on the admin API): all of a valid change, or nothing.

The file is read and validated again with the same command-line flags on top. What can
change on a running sidecar is applied in place, without closing a connection:

    log_level                    at once
    drain_timeout                the next drain
    limits.*                     new client connections (open ones keep theirs)
    outbound_timeouts.*,         each upstream's chain is rebuilt behind the same head:
    resilience.*, services.*     in-flight requests finish on the old one; breakers,
                                 budgets and bulkhead counts whose policy did not change
                                 carry over
    inbound_timeouts.request     the next request
    authorization.*              the next request (decisions cached so far are dropped)

A change to any other key (listeners, discovery, TLS files, ...) needs a restart: the whole
reload is refused with a log line naming that key, and the running config stays, exactly as
for a file that fails validation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from mesh.layers.authorize import Authorize
from mesh.layers.deadline import Deadline
from sidecar.config import ConfigError, SidecarConfig

if TYPE_CHECKING:
    from sidecar.runtime import Sidecar

log = logging.getLogger("sidecar.reload")

ConfigLoader = Callable[[], SidecarConfig]

#: Keys (or key prefixes, ending in ".") a running sidecar applies.
LIVE_KEYS = (
    "log_level",
    "drain_timeout",
    "limits.",
    "outbound_timeouts.",
    "resilience.",
    "services.",
    "inbound_timeouts.request",
    "authorization.",
)


class ReloadRefused(Exception):
    """The new config is invalid or needs a restart; the message names the key."""


def changed_keys(old: SidecarConfig, new: SidecarConfig) -> list[str]:
    """Dotted names of every leaf value that differs (lists compare whole)."""
    before = _flatten(json.loads(old.model_dump_json()))
    after = _flatten(json.loads(new.model_dump_json()))
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):  # an empty mapping has no leaves: {} equals absent
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _live(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in LIVE_KEYS)


def set_log_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


def reload(sidecar: Sidecar) -> list[str]:
    """Re-read the config and apply it; the keys that changed. ReloadRefused says why not."""
    try:
        new, changed = _check(sidecar)
    except ReloadRefused as exc:
        sidecar.metrics.reloads["refused"] += 1
        log.warning("config reload refused, the running config stays: %s", exc)
        raise
    _apply(sidecar, new)
    sidecar.metrics.reloads["applied"] += 1
    log.warning("config reloaded: %s", ", ".join(changed) if changed else "no change")
    return changed


def _check(sidecar: Sidecar) -> tuple[SidecarConfig, list[str]]:
    if sidecar.config_loader is None:
        raise ReloadRefused("no config source: the sidecar was not started from the CLI")
    try:
        new = sidecar.config_loader()
    except ConfigError as exc:
        raise ReloadRefused(str(exc)) from None
    changed = changed_keys(sidecar.config, new)
    fixed = [key for key in changed if not _live(key)]
    if fixed:
        raise ReloadRefused("; ".join(f"{key}: changes only with a restart" for key in fixed))
    return new, changed


def _apply(sidecar: Sidecar, new: SidecarConfig) -> None:
    old = sidecar.config
    sidecar.config = new
    if new.log_level != old.log_level:
        set_log_level(new.log_level)
    if new.limits != old.limits:
        policy = new.limits.policy()
        for listener in sidecar.listeners:
            listener.tracker.limits = policy
    book = new.policy_book()
    sidecar._policy_book = book  # upstreams added later
    for upstream in sidecar.metrics.upstreams:
        upstream.rebook(book)
    authorizer = new.authorization.authorizer()
    for direction, handler in sidecar.metrics.observed():
        if direction != "inbound":
            continue  # outbound chains follow their policy book
        for layer in _layers(handler):
            if isinstance(layer, Deadline):
                layer.timeout = new.inbound_timeouts.request
            elif isinstance(layer, Authorize) and new.authorization != old.authorization:
                layer.authorizer = authorizer
                layer._decided = {}  # cached decisions belong to the old policy


def _layers(handler: object) -> list[object]:
    found = []
    current: object | None = handler
    while current is not None:
        found.append(current)
        current = getattr(current, "inner", None)
    return found


async def reload_on_hangup(sidecar: Sidecar) -> None:
    """SIGHUP re-reads the config, for as long as the sidecar runs."""
    with anyio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            log.info("received SIGHUP: reloading the config")
            with contextlib.suppress(ReloadRefused):  # logged with the key
                reload(sidecar)
