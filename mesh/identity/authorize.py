"""Who may call this service: decisions by the caller's verified SPIFFE ID.

Sources of policy share one small interface; the static one reads allow and deny lists of
service names from config; Consul intentions (discovery/consul_intentions.py) plug in
behind the same interface, with the static lists taking precedence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from mesh.identity.spiffe import parse


class Authorizer(Protocol):
    def decide(self, caller: str) -> tuple[bool, str]:
        """(allowed, why) for a caller's SPIFFE ID."""
        ...

    @property
    def generation(self) -> int:
        """Changes whenever the policy does, so cached decisions can be dropped."""
        ...


@dataclass(frozen=True)
class StaticAuthorizer:
    """Deny beats allow; a caller in neither list gets the default."""

    default_allow: bool = True
    allow: frozenset[str] = field(default_factory=frozenset)
    deny: frozenset[str] = field(default_factory=frozenset)
    #: Only identities in this trust domain count as mesh callers ("" accepts any).
    trust_domain: str = ""

    @property
    def generation(self) -> int:
        return 0  # fixed at start-up

    def decide(self, caller: str) -> tuple[bool, str]:
        spiffe = parse(caller)
        if spiffe is None:
            return False, "caller has no service identity"
        if self.trust_domain and spiffe.trust_domain != self.trust_domain:
            return False, f"caller is from trust domain {spiffe.trust_domain!r}"
        if spiffe.service in self.deny:
            return False, f"{spiffe.service} is on the deny list"
        if spiffe.service in self.allow:
            return True, f"{spiffe.service} is on the allow list"
        if self.default_allow:
            return True, "allowed by default"
        return False, f"{spiffe.service} is not on the allow list (default deny)"
