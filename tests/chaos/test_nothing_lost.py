"""RELIABILITY row 44, "nothing lost": 10,000 requests while apps are killed, reset
connections, cut answers short and answer slowly, through two sidecar hops at their default
resilience settings.

Every request ends exactly once, and each ending is accounted for:
- a 2xx carries exactly the bytes the app sent for that request;
- any other status names its reason (`x-mesh-error` from a sidecar, `x-app-error` from the app);
- a connection the client sees cut belongs to an answer the app itself cut short, or to a
  request in flight when an app was killed;
- none takes longer than the outbound deadline (plus scheduling slack);
- reconciling the apps' logs (flushed before each answer, so they survive kill -9), no POST
  reached an app more than once.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.apps import AppProcess, received
from tests.support.processes import Sidecars, free_port, write_yaml

REQUESTS = 10_000
CLIENTS = 16
APPS = 3
#: The outbound deadline, retries included.
DEADLINE = 2.0
#: Threads, GC and a busy machine: how late a deadline answer may reach the client.
SLACK = 1.0
#: Time between kills: each app dies a few times during the run.
KILL_EVERY = 0.7
DOWN_FOR = 0.3
RUN_LIMIT = 240.0


@dataclass
class Outcome:
    id: int
    method: str
    started: float
    ended: float
    status: int | None  # None: the connection was cut
    body_ok: bool
    reason: str


@dataclass
class Mesh:
    apps: list[AppProcess]
    port: int
    sidecars: Sidecars


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    sidecars = Sidecars(tmp_path)
    apps: list[AppProcess] = []
    try:
        inbound_ports = []
        for i in range(APPS):
            app = AppProcess(free_port(), tmp_path / f"app{i}.log", "chaos", seed=1000 * i)
            app.start()
            apps.append(app)
            listen = free_port()
            inbound_ports.append(listen)
            sidecars.start(
                "--service", "store", "--app-port", str(app.port),
                "--listen", f"127.0.0.1:{listen}", name=f"store{i}",
            )  # fmt: skip
        port = free_port()
        catalog = write_yaml(
            tmp_path / "catalog.yaml",
            {"services": {"store": [f"127.0.0.1:{p}" for p in inbound_ports]}},
        )
        config = write_yaml(
            tmp_path / "shop.yaml",
            {
                "service": "shop",
                "catalog": str(catalog),
                "upstreams": [{"name": "store", "local_port": port}],
                "outbound_timeouts": {"connect": 0.5, "request": DEADLINE},
            },
        )
        sidecars.start("--config", str(config), name="shop")
        yield Mesh(apps, port, sidecars)
    finally:
        sidecars.stop_all()
        for app in apps:
            app.kill()


def body_for(request_id: int) -> bytes:
    size = (request_id * 7919) % 4096
    return hashlib.sha256(b"%d" % request_id).digest() * (size // 32 + 1)


def expected_answer(method: str, request_id: int) -> bytes:
    body = body_for(request_id) if method == "POST" else b""
    return f"/r/{request_id} {hashlib.sha256(body).hexdigest()}".encode()


def client(port: int, ids: Iterator[int], outcomes: list[Outcome], stop_at: float) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE + 5)
    for request_id in ids:
        if time.monotonic() > stop_at:
            return
        method = "POST" if request_id % 5 < 2 else "GET"
        body = body_for(request_id) if method == "POST" else None
        started = time.monotonic()
        try:
            conn.request(method, f"/r/{request_id}", body)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE + 5)
            outcomes.append(Outcome(request_id, method, started, time.monotonic(), None, False, ""))
            continue
        reason = response.getheader("x-mesh-error") or response.getheader("x-app-error") or ""
        ok = data == expected_answer(method, request_id)
        outcomes.append(
            Outcome(request_id, method, started, time.monotonic(), response.status, ok, reason)
        )
        if response.getheader("connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE + 5)
    conn.close()


def killer(apps: list[AppProcess], kills: list[float], stop: threading.Event) -> None:
    for app in itertools.cycle(apps):
        # Chaos pacing, not synchronisation: the run is the same whenever kills land.
        if stop.wait(KILL_EVERY):
            return
        kills.append(time.monotonic())
        app.kill()
        if stop.wait(DOWN_FOR):
            app.start()
            return
        app.start()


@pytest.mark.timeout(RUN_LIMIT + 60)
def test_ten_thousand_requests_under_kills_resets_and_latency_lose_nothing(mesh: Mesh) -> None:
    ids = iter(range(REQUESTS))
    lock = threading.Lock()

    def next_ids() -> Iterator[int]:
        while True:
            with lock:
                request_id = next(ids, None)
            if request_id is None:
                return
            yield request_id

    outcomes: list[Outcome] = []
    kills: list[float] = []
    stop = threading.Event()
    chaos = threading.Thread(target=killer, args=(mesh.apps, kills, stop))
    stop_at = time.monotonic() + RUN_LIMIT
    clients = [
        threading.Thread(target=client, args=(mesh.port, next_ids(), outcomes, stop_at))
        for _ in range(CLIENTS)
    ]
    chaos.start()
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(RUN_LIMIT + 30)
    stop.set()
    chaos.join(30)

    # Every request ended exactly once.
    assert sorted(o.id for o in outcomes) == list(range(REQUESTS))

    cut_short = {int(line.split("/r/")[1]) for a in mesh.apps for line in a.lines()
                 if line.startswith("ABORT ")}  # fmt: skip
    summary: Counter[str] = Counter()
    for o in outcomes:
        assert o.ended - o.started <= DEADLINE + SLACK, (o, "outlived its deadline")
        if o.status is None:
            during_kill = any(o.started <= k <= o.ended for k in kills)
            assert o.id in cut_short or during_kill, (o, "cut without a cause")
            summary["cut (app cut its answer, or was killed)"] += 1
        elif 200 <= o.status < 300:
            assert o.body_ok, (o, "2xx with other bytes than the app sent")
            summary["2xx byte-exact"] += 1
        else:
            assert o.reason, (o, "an error without a reason")
            summary[f"{o.status} {o.reason}"] += 1

    posts = received(mesh.apps, "POST")
    twice = {target: n for target, n in posts.items() if n > 1}
    assert not twice, f"POSTs that reached an app more than once: {twice}"

    gets = received(mesh.apps, "GET")
    for o in outcomes:
        if o.status is not None and 200 <= o.status < 300:
            seen = posts if o.method == "POST" else gets
            assert seen[f"/r/{o.id}"] >= 1, (o, "a 2xx no app answered")

    ok = summary["2xx byte-exact"]
    retry = mesh.sidecars.started[-1].admin("/clusters")["store"]["resilience"]["retry"]
    print(f"\n{REQUESTS} requests, {len(kills)} app kills, {retry['retries_total']} retries:")
    for what, count in summary.most_common():
        print(f"  {count:6d}  {what}")
    # The mesh keeps serving through it all: retries and ejection absorb most faults.
    assert ok >= 0.85 * REQUESTS, summary
    assert len(kills) >= 3, "the run ended before the apps were killed a few times"
    assert retry["retries_total"] > 0
