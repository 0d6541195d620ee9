"""Retry amplification along a chain of hops, in process (issue 5's three-service case).

    client -> [A's Retry] -> app B -> [B's Retry] -> app C -> [C's Retry] -> leaf (always 503)

Each hop has its own budget (20 %, no floor, so the ratio is what is measured). With the
cross-hop headers propagated by the apps, the leaf sees 1.2x the offered load: only the
outermost hop retries app failures. Without them, every hop spends its budget and the
leaf sees about 1.2 ** 3 = 1.73x; with no budgets at all it would be (1 + 1) ** 3 = 8x.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from mesh.http1.message import Request, Response
from mesh.layers.retry import Retry
from mesh.resilience.budget import RetryBudget
from mesh.resilience.hop import ATTEMPT_HEADER, DEADLINE_HEADER
from mesh.resilience.policy import BudgetPolicy, RetryPolicy
from mesh.stack import Handler
from tests.support.fakes import ManualClock, make_request, response, run

pytestmark = pytest.mark.timeout(30)

OFFERED = 1000


class Leaf(Handler):
    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, request: Request) -> Response:
        self.calls += 1
        return response(503)


class App(Handler):
    """A service's app: calls the next hop, passing the cross-hop headers on (or not)."""

    def __init__(self, outbound: Handler, propagate: bool) -> None:
        self.outbound = outbound
        self.propagate = propagate

    async def handle(self, request: Request) -> Response:
        carried = [(n, v) for n, v in request.headers if n in (ATTEMPT_HEADER, DEADLINE_HEADER)]
        call = make_request(headers=carried if self.propagate else [])
        answer = await self.outbound.handle(call)
        return response(answer.status)


def chain(propagate: bool, policy: RetryPolicy) -> tuple[Handler, Leaf]:
    clock = ManualClock()

    async def no_wait(seconds: float) -> None:
        return None

    sleep: Callable[[float], Awaitable[None]] = no_wait
    leaf = Leaf()
    handler: Handler = leaf
    for hop in range(3):
        budget = RetryBudget(BudgetPolicy(ratio=0.2, min_per_s=0), clock)
        handler = Retry(handler, policy, budget, clock=clock, sleep=sleep)
        if hop < 2:
            handler = App(handler, propagate)
    return handler, leaf


def offer(handler: Handler) -> None:
    for _ in range(OFFERED):
        assert run(handler.handle(make_request())).status == 503


def test_with_cross_hop_headers_the_leaf_sees_one_budget_of_retries() -> None:
    handler, leaf = chain(propagate=True, policy=RetryPolicy())
    offer(handler)
    assert leaf.calls <= OFFERED * 1.2
    assert leaf.calls == 1200


def test_without_them_every_hop_spends_its_budget() -> None:
    handler, leaf = chain(propagate=False, policy=RetryPolicy())
    offer(handler)
    assert leaf.calls > OFFERED * 1.6  # 1000 * 1.2 ** 3 = 1728


def test_the_caller_retried_rule_alone_is_not_enough_with_budgets() -> None:
    # Without deferring to the caller, hops below the first still retry first attempts.
    handler, leaf = chain(propagate=True, policy=RetryPolicy(defer_to_caller=False))
    offer(handler)
    assert leaf.calls > OFFERED * 1.6
