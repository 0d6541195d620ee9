"""Retries never multiply along a chain: A -> B -> C with C always failing.

Each of A's and B's sidecars may retry twice, and C's 503 is retryable. Without cross-hop
coordination each hop would spend its own budget and C would see about 1.2 x 1.2 times the
offered load (without budgets, (1 + 2) ** 2 = 9 times). With it, B's sidecar sees that A's
sidecar retries (`x-mesh-attempt`, which B's app forwards like trace headers) and leaves
app failures to it, so C sees about 1.2 times the offered load: one budget for the chain.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.apps import AppProcess, received
from tests.support.processes import Sidecars, free_port, write_yaml

OFFERED = 300
#: Retries may add this share of requests (the default), plus a floor of `MIN_PER_S` per
#: second over a sliding window of `TTL` seconds.
RATIO = 0.2
MIN_PER_S = 0.5
TTL = 10.0


def one_budget(elapsed: float) -> float:
    """The most retries one budget allows for the offered load over `elapsed` seconds."""
    return OFFERED * RATIO + MIN_PER_S * (elapsed + TTL)


def resilience(defer_to_caller: bool = True) -> dict[str, Any]:
    return {
        "retry": {
            "max_retries": 2,
            "backoff_base": 0.001,
            "backoff_max": 0.002,
            "defer_to_caller": defer_to_caller,
        },
        "budget": {"ratio": RATIO, "min_per_s": MIN_PER_S, "ttl": TTL},
        # Breakers would stop the traffic to C altogether; here only retries are measured.
        "outlier": {"enabled": False},
    }


def catalog(tmp_path: Path, service: str, port: int) -> Path:
    return write_yaml(
        tmp_path / f"catalog-{service}.yaml", {"services": {service: [f"127.0.0.1:{port}"]}}
    )


@dataclass
class Chain:
    entry: int
    leaf: AppProcess


def start_chain(tmp_path: Path, sidecars: Sidecars, apps: list[AppProcess], defer: bool) -> Chain:
    leaf = AppProcess(free_port(), tmp_path / "c.log", "fail")
    leaf.start()
    apps.append(leaf)
    c_in = free_port()
    sidecars.start(
        "--service", "c", "--app-port", str(leaf.port), "--listen", f"127.0.0.1:{c_in}",
        name="c",
    )  # fmt: skip

    b_out, b_in = free_port(), free_port()
    middle = AppProcess(free_port(), tmp_path / "b.log", "forward", f"http://127.0.0.1:{b_out}")
    middle.start()
    apps.append(middle)
    b_config = {
        "service": "b",
        "app_port": middle.port,
        "listen": f"127.0.0.1:{b_in}",
        "catalog": str(catalog(tmp_path, "c", c_in)),
        "upstreams": [{"name": "c", "local_port": b_out}],
        "resilience": resilience(defer),
    }
    sidecars.start("--config", str(write_yaml(tmp_path / "b.yaml", b_config)), name="b")

    a_out = free_port()
    a_config = {
        "service": "a",
        "catalog": str(catalog(tmp_path, "b", b_in)),
        "upstreams": [{"name": "b", "local_port": a_out}],
        "resilience": resilience(),
    }
    sidecars.start("--config", str(write_yaml(tmp_path / "a.yaml", a_config)), name="a")
    return Chain(a_out, leaf)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[tuple[Sidecars, list[AppProcess]]]:
    sidecars = Sidecars(tmp_path)
    apps: list[AppProcess] = []
    try:
        yield sidecars, apps
    finally:
        sidecars.stop_all()
        for app in apps:
            app.kill()


def offer_load(port: int) -> tuple[list[int], float]:
    started = time.monotonic()
    statuses = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for i in range(OFFERED):
        conn.request("GET", f"/order/{i}")
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
    conn.close()
    return statuses, time.monotonic() - started


def leaf_load(chain: Chain) -> int:
    return sum(received([chain.leaf], "GET").values())


def test_a_failing_leaf_sees_one_budget_of_retries_not_one_per_hop(
    tmp_path: Path, processes: tuple[Sidecars, list[AppProcess]]
) -> None:
    chain = start_chain(tmp_path, *processes, defer=True)
    statuses, elapsed = offer_load(chain.entry)
    assert set(statuses) == {503}
    seen = leaf_load(chain)
    print(f"\noffered {OFFERED}, the leaf saw {seen} ({seen / OFFERED:.2f}x)")
    assert OFFERED < seen <= OFFERED + one_budget(elapsed)


def test_without_coordination_each_hop_spends_its_own_budget(
    tmp_path: Path, processes: tuple[Sidecars, list[AppProcess]]
) -> None:
    chain = start_chain(tmp_path, *processes, defer=False)
    _, elapsed = offer_load(chain.entry)
    seen = leaf_load(chain)
    print(f"\nuncoordinated: offered {OFFERED}, the leaf saw {seen} ({seen / OFFERED:.2f}x)")
    # B's sidecar retries on its own: the two budgets compound.
    assert seen > OFFERED + one_budget(elapsed)
