"""Authorization by Consul intentions, decided locally from a watched list.

`/v1/connect/intentions/match?by=destination&name=<service>` is watched with blocking
queries (discovery/blocking.py); each answer replaces the list, and the authorizer's
generation changes so the inbound layer drops its cached decisions: a changed intention
applies to the next request, about a second after the change in Consul.

Precedence is Consul's: intentions are ordered by their `Precedence` (an exact source and
destination beat a wildcard on either side, a wildcard destination is weakest), and the
first whose source matches the caller decides. When none matches, the default applies:
`authorization.default` when configured, else Consul's own (allow when ACLs are off, as in
dev mode, else the ACL default policy).

Local config rules come first: a service on `authorization.deny` is refused and one on
`authorization.allow` is admitted whatever the intentions say (a local override for an
incident, without touching the shared policy).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from discovery.blocking import LoopPolicy, blocking_answers
from discovery.consul_client import AsyncConsul, ConsulBadResponse, ConsulFailure
from mesh.identity.spiffe import parse

log = logging.getLogger("discovery.consul_intentions")

WILDCARD = "*"


@dataclass(frozen=True)
class Intention:
    source: str
    action: str
    precedence: int
    id: str = ""

    def matches(self, caller: str) -> bool:
        return self.source in (caller, WILDCARD)


def parse_intentions(entries: Any) -> tuple[Intention, ...]:
    """Intentions from a match answer, highest precedence first; refuses the wrong shape."""
    if not isinstance(entries, list):
        raise ConsulBadResponse("intentions: expected a list")
    parsed = []
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("SourceName"), str):
            raise ConsulBadResponse("intentions: an entry without SourceName")
        source = entry["SourceName"]
        # An intention without an L4 action (L7 permissions, newer Consul) is not ours to
        # apply: treat it as deny, which is what it does to a connection it cannot inspect.
        action = entry.get("Action") if entry.get("Action") in ("allow", "deny") else "deny"
        precedence = entry.get("Precedence")
        if not isinstance(precedence, int):
            precedence = 9 if source != WILDCARD else 8
        parsed.append(Intention(source, str(action), precedence, str(entry.get("ID", ""))))
    # Stable: equal precedence keeps Consul's order; an exact source beats the wildcard.
    return tuple(sorted(parsed, key=lambda i: (-i.precedence, i.source == WILDCARD)))


def first_match(intentions: Sequence[Intention], caller: str) -> Intention | None:
    return next((i for i in intentions if i.matches(caller)), None)


class IntentionsAuthorizer:
    """Consul intentions for one destination service, under the local allow and deny lists."""

    def __init__(
        self,
        service: str,
        *,
        allow: frozenset[str] = frozenset(),
        deny: frozenset[str] = frozenset(),
        default_allow: bool | None = None,
    ) -> None:
        self.service = service
        self.allow = allow
        self.deny = deny
        #: None: follow Consul's default, learnt from the agent.
        self.configured_default = default_allow
        self.consul_default: bool | None = None
        self.trust_domain = ""
        self.intentions: tuple[Intention, ...] | None = None
        self._generation = 0

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def answered(self) -> bool:
        return self.intentions is not None

    def update(self, intentions: tuple[Intention, ...]) -> bool:
        if intentions == self.intentions:
            return False
        self.intentions = intentions
        self._generation += 1
        shown = ", ".join(f"{i.source}:{i.action}" for i in intentions) or "none"
        log.info("consul: intentions for %s now %s", self.service, shown)
        return True

    def set_consul_default(self, allow: bool) -> None:
        if allow != self.consul_default:
            self.consul_default = allow
            self._generation += 1

    def set_trust_domain(self, trust_domain: str) -> None:
        if trust_domain != self.trust_domain:
            self.trust_domain = trust_domain
            self._generation += 1

    def decide(self, caller: str) -> tuple[bool, str]:
        spiffe = parse(caller)
        if spiffe is None:
            return False, "caller has no service identity"
        if self.trust_domain and spiffe.trust_domain != self.trust_domain:
            return False, f"caller is from trust domain {spiffe.trust_domain!r}"
        name = spiffe.service
        if name in self.deny:
            return False, f"{name} is on the deny list (local config)"
        if name in self.allow:
            return True, f"{name} is on the allow list (local config)"
        if self.intentions is None:
            return False, "consul intentions not known yet"
        match = first_match(self.intentions, name)
        if match is not None:
            allowed = match.action == "allow"
            return allowed, f"intention {match.source} -> {self.service} says {match.action}"
        default = self.configured_default
        origin = "configured default"
        if default is None:
            default, origin = bool(self.consul_default), "consul's default"
        return default, f"no intention matches; {origin}: {'allow' if default else 'deny'}"


async def consul_default_allow(consul: AsyncConsul) -> bool:
    """Consul's answer when no intention matches: allow without ACLs, else the ACL default."""
    agent = await consul.agent.self()
    debug = agent.get("DebugConfig") if isinstance(agent, Mapping) else None
    if not isinstance(debug, Mapping):
        log.warning("consul: cannot read the ACL default policy; denying unmatched callers")
        return False
    if not debug.get("ACLsEnabled"):
        return True
    return bool(debug.get("ACLDefaultPolicy") == "allow")


async def watch_intentions(
    consul: AsyncConsul, authorizer: IntentionsAuthorizer, policy: LoopPolicy
) -> None:
    """Keep `authorizer` current; on failure the last known intentions stay (runs until
    cancelled)."""

    async def query(index: int | None) -> tuple[int, Any]:
        return await consul.intentions_match(authorizer.service, index, policy.wait)

    async def build(entries: Any, restart: bool) -> tuple[Intention, ...]:
        if restart:
            if authorizer.configured_default is None:
                authorizer.set_consul_default(await consul_default_allow(consul))
            _, roots = await consul.roots()
            authorizer.set_trust_domain(str(roots["TrustDomain"]).lower())
        return parse_intentions(entries)

    failing_since = False
    async for result in blocking_answers(query, build, policy):
        if isinstance(result, ConsulFailure):
            if not failing_since:
                log.warning(
                    "consul: intentions for %s: %s; keeping the last known",
                    authorizer.service,
                    result,
                )
            failing_since = True
            continue
        if failing_since:
            log.info("consul: intentions for %s answering again", authorizer.service)
            failing_since = False
        authorizer.update(result.value)
