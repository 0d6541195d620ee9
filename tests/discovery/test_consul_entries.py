"""Consul health/connect answers as EndpointSets: identity, weights, refusals, garbled shapes."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery.consul_client import ConsulBadResponse
from discovery.consul_entries import MAX_REJECTED_SHOWN, endpoint_set
from tests.support.fake_consul import entry

pytestmark = pytest.mark.timeout(30)

TRUST = "abcd.consul"
IDENTITY = f"spiffe://{TRUST}/ns/default/dc/dc7/svc/payments"


def parse(entries: Any, max_endpoints: int = 5000) -> Any:
    return endpoint_set(
        "payments", entries, trust_domain=TRUST, datacenter="dc7", max_endpoints=max_endpoints
    )


def test_entries_become_endpoints_with_identity_and_weight() -> None:
    found = parse([entry(21001, weight=3), entry(21002, address="10.0.0.9")])
    assert [(e.host, e.port, e.weight) for e in found.endpoints] == [
        ("127.0.0.1", 21001, 3),
        ("10.0.0.9", 21002, 1),
    ]
    assert {e.identity for e in found.endpoints} == {IDENTITY}
    assert dict(found.endpoints[0].meta) == {"node": "node1", "id": "sidecar-21001"}
    assert found.rejected == ()


def test_empty_service_address_means_the_node_address() -> None:
    [endpoint] = parse([entry(21001, address="", node_address="10.1.2.3")]).endpoints
    assert (endpoint.host, endpoint.port) == ("10.1.2.3", 21001)


@pytest.mark.parametrize(
    ("hostile", "reason"),
    [
        (entry(0), "port 0 out of range"),
        (entry(70000), "port 70000 out of range"),
        (entry(21001, address="0.0.0.0"), "unspecified address 0.0.0.0"),
        (entry(21001, address="::"), "unspecified address ::"),
        (entry(21001, address="", node_address=""), "empty host"),
        (entry(21001, address="evil host\r\nX: y"), "malformed address"),
        (entry(21001, weight=0), "weight 0"),
        (entry(21001, weight=-4), "weight -4"),
    ],
)
def test_hostile_entries_are_refused_one_by_one(hostile: dict[str, Any], reason: str) -> None:
    found = parse([entry(21009), hostile])
    assert [e.port for e in found.endpoints] == [21009]
    [(_, why)] = found.rejected
    assert why == reason


def test_duplicates_are_refused_and_huge_weights_capped() -> None:
    found = parse([entry(21001, weight=10**9), entry(21001)])
    [endpoint] = found.endpoints
    assert endpoint.weight == 65535
    assert found.rejected == (("127.0.0.1:21001", "duplicate address"),)


def with_service(**fields: Any) -> dict[str, Any]:
    good = entry(21002)
    return {**good, "Service": {**good["Service"], **fields}}


@pytest.mark.parametrize(
    ("garbled", "named"),
    [
        ({"not": "a list"}, "expected list, got dict"),
        (["a string"], "entry 1: expected dict"),
        ([{"Node": {"Address": "127.0.0.1"}}], "entry 1.Service: expected Mapping"),
        ([{"Service": {"Address": "", "Port": 1}, "Node": []}], "entry 1.Node: expected"),
        ([with_service(Port="80")], "entry 1.Service.Port: expected int, got str"),
        ([with_service(Port=True)], "Port: expected int, got bool"),
        ([with_service(Address=7)], "Address: expected str"),
        ([with_service(Weights=[1])], "Weights: expected dict"),
        ([with_service(Weights={"Passing": "x"})], "Weights.Passing: expected int"),
    ],
)
def test_a_garbled_answer_is_refused_as_a_whole(garbled: Any, named: str) -> None:
    # A good entry first: one bad field anywhere must not leave a partial, shrunken set.
    answer = [entry(21001), *garbled] if isinstance(garbled, list) else garbled
    with pytest.raises(ConsulBadResponse, match=named):
        parse(answer)


def test_a_hundred_thousand_entries_are_capped_quickly() -> None:
    entries = [entry(20000 + i % 40000, address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
               for i in range(100_000)]  # fmt: skip
    started = time.monotonic()
    found = parse(entries, max_endpoints=1000)
    assert time.monotonic() - started < 1.0
    assert len(found.endpoints) == 1000
    assert found.rejected == (("...", "99000 more over max_endpoints 1000"),)


def test_many_refusals_are_summed_up() -> None:
    found = parse([entry(0, service_id=str(i)) for i in range(100)])
    assert found.endpoints == ()
    assert len(found.rejected) == MAX_REJECTED_SHOWN + 1
    assert found.rejected[-1] == ("...", f"{100 - MAX_REJECTED_SHOWN} more refused")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
entry_like = st.fixed_dictionaries(
    {
        "Node": st.fixed_dictionaries({"Node": json_values, "Address": json_values}),
        "Service": st.fixed_dictionaries(
            {"Address": json_values, "Port": json_values, "Weights": json_values}
        ),
    }
)


@settings(max_examples=100, deadline=None)
@given(st.lists(entry_like | json_values, max_size=6) | json_values)
def test_any_json_is_an_endpoint_set_or_a_bad_response(answer: Any) -> None:
    try:
        found = parse(answer)
    except ConsulBadResponse:
        return
    for endpoint in found.endpoints:
        assert endpoint.problem() is None
        assert 1 <= endpoint.weight <= 65535
