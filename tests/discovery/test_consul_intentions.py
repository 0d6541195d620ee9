"""Deciding by Consul intentions: Consul's precedence, the default, and local rules first."""

from __future__ import annotations

from typing import Any

import pytest

from discovery.consul_client import ConsulBadResponse
from discovery.consul_intentions import IntentionsAuthorizer, parse_intentions

TD = "1111-2222.consul"


def caller(service: str, trust_domain: str = TD) -> str:
    return f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/{service}"


def entry(source: str, action: str, precedence: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"ID": f"{source}-{action}", "SourceName": source, "Action": action}
    if precedence is not None:
        data["Precedence"] = precedence
    return data


def authorizer(entries: list[dict[str, Any]], **options: Any) -> IntentionsAuthorizer:
    auth = IntentionsAuthorizer("api", **options)
    auth.set_trust_domain(TD)
    auth.set_consul_default(True)
    auth.update(parse_intentions(entries))
    return auth


def test_exact_source_beats_the_wildcard_whatever_the_order() -> None:
    for entries in (
        [entry("*", "deny", 8), entry("web", "allow", 9)],
        [entry("web", "allow", 9), entry("*", "deny", 8)],
        [entry("*", "deny"), entry("web", "allow")],  # no Precedence field: same rule
    ):
        auth = authorizer(entries)
        assert auth.decide(caller("web"))[0] is True
        assert auth.decide(caller("other")) == (False, "intention * -> api says deny")


def test_no_match_follows_the_configured_default_else_consuls() -> None:
    entries = [entry("web", "allow", 9)]
    assert authorizer(entries).decide(caller("other"))[0] is True  # consul: ACLs off
    denied = authorizer(entries, default_allow=False).decide(caller("other"))
    assert denied == (False, "no intention matches; configured default: deny")
    consul_deny = authorizer(entries)
    consul_deny.set_consul_default(False)
    assert consul_deny.decide(caller("other"))[0] is False


def test_local_rules_take_precedence_over_intentions() -> None:
    auth = authorizer(
        [entry("web", "allow", 9), entry("ops", "deny", 9)],
        allow=frozenset({"ops"}),
        deny=frozenset({"web"}),
    )
    assert auth.decide(caller("web")) == (False, "web is on the deny list (local config)")
    assert auth.decide(caller("ops")) == (True, "ops is on the allow list (local config)")


def test_changes_move_the_generation_and_unknown_state_denies() -> None:
    auth = IntentionsAuthorizer("api")
    assert auth.decide(caller("web")) == (False, "consul intentions not known yet")
    before = auth.generation
    assert auth.update(parse_intentions([entry("web", "deny", 9)]))
    assert auth.generation > before
    same = auth.generation
    assert not auth.update(parse_intentions([entry("web", "deny", 9)]))
    assert auth.generation == same


def test_other_trust_domains_and_non_service_ids_are_refused() -> None:
    auth = authorizer([entry("*", "allow", 8)])
    assert auth.decide(caller("web", "evil.consul"))[0] is False
    assert auth.decide("spiffe://1111-2222.consul/workload/x")[0] is False


@pytest.mark.parametrize("bad", [{"x": 1}, [1], [{"Action": "allow"}]])
def test_answers_of_the_wrong_shape_are_refused(bad: Any) -> None:
    with pytest.raises(ConsulBadResponse):
        parse_intentions(bad)


def test_an_intention_without_an_l4_action_denies() -> None:
    auth = authorizer([{"SourceName": "web", "Precedence": 9, "Permissions": []}])
    assert auth.decide(caller("web"))[0] is False
