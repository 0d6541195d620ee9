"""ConsulResolver against a scripted misbehaving agent (RELIABILITY.md section F, rows 37-39).

After a good answer, the agent fails in every way a real one cannot be made to: refused,
hung, 500, garbage JSON, wrong types, a 10 MB body, a dropped connection. The watch keeps the
last good endpoints (re-sent once, marked stale, with the reason), backs off, never spins,
and recovers when the agent does. The index rules are checked on the wire: what was sent.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest

from discovery.blocking import LoopPolicy, default_backoff
from discovery.consul import ConsulResolver
from discovery.consul_client import AsyncConsul
from discovery.endpoint import EndpointSet
from tests.support.fake_consul import TRUST_DOMAIN, FakeConsul, entry

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

SERVICE = "payments"
# Quick failure detection for tests: a 1s blocking wait and 1s timeouts (a hang costs ~2s).
WAIT = 1.0
TIMEOUT = 1.0


async def until(predicate: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Poll observable state (there is no event to wait on), bounded."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        await anyio.sleep(0.01)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


@dataclass
class Watch:
    resolver: ConsulResolver
    seen: list[EndpointSet] = field(default_factory=list)

    @property
    def last(self) -> EndpointSet:
        return self.seen[-1]

    def ports(self) -> list[int]:
        return [e.port for e in self.last.endpoints]


#: Faster than the defaults (1 query/s sustained), so recoveries take no test time; the
#: rate limit itself is checked with the defaults.
QUICK = LoopPolicy(wait=WAIT, rate=20.0, burst=2, backoff=default_backoff(max_wait=0.2))


@asynccontextmanager
async def watching(
    fake: FakeConsul, service: str = SERVICE, policy: LoopPolicy = QUICK
) -> AsyncIterator[Watch]:
    consul = AsyncConsul.from_url(
        fake.url, connect_timeout=TIMEOUT, request_timeout=TIMEOUT, max_body=8 * 1024 * 1024
    )
    watch = Watch(ConsulResolver(consul, policy))

    async def run() -> None:
        async for endpoint_set in watch.resolver.watch(service):
            watch.seen.append(endpoint_set)

    async with consul, anyio.create_task_group() as tg:
        tg.start_soon(run)
        yield watch
        tg.cancel_scope.cancel()


@pytest.fixture
def fake() -> AsyncIterator[FakeConsul]:
    with FakeConsul() as fake:
        yield fake


async def warmed_up(fake: FakeConsul, watch: Watch) -> None:
    fake.set_entries(SERVICE, [entry(21001, weight=2), entry(21002)])
    await until(lambda: bool(watch.seen) and watch.ports() == [21001, 21002], "the first answer")
    assert watch.last.stale_since is None


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        # The query held open at that moment is dropped; the next ones are refused.
        ("refused", "RemoteProtocolError|ReadError|ConnectError"),
        ("hang", "ReadTimeout|no answer within"),
        ("error", "HTTP 500"),
        ("garbage", r"unusable response \(JSONDecodeError"),
        ("wrong_types", "entry 0.Service.Address: expected str, got NoneType"),
        ("huge", "body over 8388608 bytes"),
        ("reset", "RemoteProtocolError: Server disconnected"),
    ],
)
async def test_last_good_endpoints_survive_every_fault(
    fake: FakeConsul, fault: str, reason: str
) -> None:
    async with watching(fake) as watch:
        await warmed_up(fake, watch)
        good = watch.last
        started = time.time()
        if fault == "refused":
            fake.refuse()
        else:
            fake.set_mode(fault)
        # One more set: the same endpoints, marked stale, saying why.
        await until(lambda: watch.last.stale_since is not None, f"staleness under {fault}")
        stale = watch.last
        assert stale.endpoints == good.endpoints
        assert stale.stale_since is not None and stale.stale_since >= started
        assert re.search(reason, stale.last_error), stale.last_error
        assert watch.seen == [good, stale]

        # The agent comes back with a change: fresh endpoints, no longer stale.
        if fault == "refused":
            fake.resume()
        fake.set_mode("ok")
        fake.set_entries(SERVICE, [entry(21003)])
        await until(lambda: watch.ports() == [21003], f"recovery from {fault}", within=8)
        assert watch.last.stale_since is None and watch.last.last_error == ""


async def test_recovery_without_a_change_clears_staleness(fake: FakeConsul) -> None:
    async with watching(fake) as watch:
        await warmed_up(fake, watch)
        fake.set_mode("error")
        await until(lambda: watch.last.stale_since is not None, "staleness")
        fake.set_mode("ok")
        await until(lambda: watch.last.stale_since is None, "fresh again", within=8)
        assert watch.ports() == [21001, 21002]


@pytest.mark.parametrize("fault", ["instant", "error"])
async def test_the_loop_never_spins(fake: FakeConsul, fault: str) -> None:
    """A server answering at once (ignoring the index), or failing at once: rate-limited."""
    async with watching(fake, policy=LoopPolicy(wait=WAIT)) as watch:
        await warmed_up(fake, watch)
        fake.set_mode(fault)
        since = time.monotonic()
        window = 2.0
        await until(lambda: time.monotonic() - since >= window, "the window", within=5)
        queries = len(fake.health_queries(SERVICE, since))
        policy = watch.resolver.policy
        # The token bucket's bound (its burst plus its rate over the window), plus one query
        # that may have been in flight; the instant server shows the loop keeps asking.
        assert queries <= policy.burst + policy.rate * window + 1, queries
        assert queries >= 2
        if fault == "instant":
            # Same index, same data: every answer is a duplicate and nothing is re-sent.
            assert len(watch.seen) == 1


async def test_index_going_backwards_starts_over_and_never_sends_below_one(
    fake: FakeConsul,
) -> None:
    async with watching(fake) as watch:
        await warmed_up(fake, watch)
        before = fake.state.index
        assert before > 3
        mark = time.monotonic()
        fake.state.backwards_index = 3
        fake.set_entries(SERVICE, [entry(21005)])
        fake.set_mode("backwards")
        await until(lambda: watch.ports() == [21005], "the answer under a lower index")
        await until(lambda: len(fake.health_queries(SERVICE, mark)) >= 3, "queries after it")
        fake.set_mode("ok")
        sent = [q.query.get("index") for q in fake.health_queries(SERVICE, mark)]
        # After the backwards answer the next query starts over without an index, then
        # blocks on the new, lower index.
        assert None in sent, sent
        assert any(i == "3" for i in sent), sent

    # An index of 0 from a buggy server: the next query still sends at least 1.
    with FakeConsul() as zero:
        zero.state.backwards_index = 0
        zero.set_mode("backwards")
        async with watching(zero) as watch:
            await until(lambda: len(zero.health_queries(SERVICE)) >= 3, "several queries")
    every = [q.query.get("index") for q in fake.requests + zero.requests if "index" in q.query]
    assert every and all(int(i) >= 1 for i in every), every


async def test_queries_are_blocking_and_passing_only(fake: FakeConsul) -> None:
    async with watching(fake) as watch:
        await warmed_up(fake, watch)
        await until(lambda: len(fake.health_queries(SERVICE)) >= 2, "a blocking query")
    first, second = fake.health_queries(SERVICE)[:2]
    assert "index" not in first.query and "passing" in first.query
    assert second.query["index"] == str(fake.state.index)
    assert second.query["wait"] == "1000ms" and "passing" in second.query


async def test_identity_is_the_agents_trust_domain_and_datacenter(fake: FakeConsul) -> None:
    async with watching(fake) as watch:
        await warmed_up(fake, watch)
        identities = {e.identity for e in watch.last.endpoints}
        weights = [e.weight for e in watch.last.endpoints]
    assert identities == {f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/{SERVICE}"}
    assert weights == [2, 1]


async def test_hostile_entries_are_refused_and_a_flood_capped(fake: FakeConsul) -> None:
    async with watching(fake) as watch:
        hostile = [entry(0), entry(21001, address="0.0.0.0"), entry(21002, address="::")]
        fake.set_entries(SERVICE, [*hostile, entry(21003)])
        await until(lambda: bool(watch.seen) and watch.ports() == [21003], "the answer")
        assert [reason for _, reason in watch.last.rejected] == [
            "port 0 out of range",
            "unspecified address 0.0.0.0",
            "unspecified address ::",
        ]
        # 100k entries are over the body cap (refused whole, last good kept); 20k fit in
        # it and are capped at max_endpoints.
        kept = watch.last
        fake.set_entries(SERVICE, flood(100_000))
        await until(lambda: watch.last.stale_since is not None, "the refused flood")
        assert "too large" in watch.last.last_error
        assert watch.last.endpoints == kept.endpoints
        watch.resolver.max_endpoints = 500
        fake.set_entries(SERVICE, flood(20_000))
        await until(lambda: len(watch.last.endpoints) == 500, "the capped flood", within=10)
        assert watch.last.rejected[-1] == ("...", "19500 more over max_endpoints 500")


def flood(count: int) -> list[dict[str, object]]:
    return [entry(20000 + i % 40000, address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
            for i in range(count)]  # fmt: skip


async def test_absent_agent_gives_no_answer_until_it_appears() -> None:
    """Before a first good answer nothing is yielded: the sidecar stays not ready."""
    with FakeConsul() as fake:
        fake.refuse()
        async with watching(fake) as watch:
            mark = time.monotonic()
            await until(lambda: time.monotonic() - mark > 1.0, "a second of refusals")
            assert watch.seen == []
            fake.resume()
            fake.set_entries(SERVICE, [])
            # An authoritative empty answer is an answer: ready, and no endpoints.
            await until(lambda: bool(watch.seen), "the first answer", within=8)
            assert watch.last.endpoints == () and watch.last.stale_since is None


async def test_knows_answers_from_the_catalog(fake: FakeConsul) -> None:
    consul = AsyncConsul.from_url(fake.url, connect_timeout=TIMEOUT, request_timeout=TIMEOUT)
    resolver = ConsulResolver(consul, LoopPolicy(wait=WAIT))
    async with consul, anyio.create_task_group() as tg:
        assert resolver.knows(SERVICE) is None
        assert not resolver.catalog_answered
        tg.start_soon(resolver.watch_catalog)
        await until(lambda: resolver.catalog_answered, "the catalog")
        assert resolver.knows(SERVICE) is False
        fake.set_entries(SERVICE, [entry(21001)])
        await until(lambda: resolver.knows(SERVICE) is True, "the new service")
        assert resolver.knows("example.com") is False
        # A failing catalog keeps what it knew.
        fake.refuse()
        await until(lambda: len(fake.requests) > 0, "requests")
        assert resolver.knows(SERVICE) is True
        tg.cancel_scope.cancel()
