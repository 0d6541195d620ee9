"""Checks a running compose demo through Jaeger's and Prometheus's HTTP APIs.

    python3 -m sidecar.demo.check [--jaeger http://localhost:16686]
                                  [--prometheus http://localhost:9090] [--wait 120]

Run from the repository root while `docker compose up` runs in compose/ (standard library
only: no venv needed). It passes when Jaeger knows every service and holds a trace that
crosses the whole order path, and Prometheus scrapes every sidecar and sees its request
counters grow. Until then it asks again, for at most --wait seconds; exit 0 or 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from sidecar.demo.topology import ENTRY, LOAD_CLIENT, SERVICES, service

#: The sidecars the compose file's Prometheus scrapes (job name in compose/prometheus.yml).
JOB = "mesh-sidecars"
#: A request counter of any sidecar (the metric names live with the metrics code).
REQUESTS = "mesh_.*requests.*_total"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def order_path() -> set[str]:
    """Every service one request to /orders crosses: the entry, orders, and all below it."""
    found = {ENTRY}
    todo = ["orders"]
    while todo:
        name = todo.pop()
        found.add(name)
        todo.extend(service(name).calls)
    return found


def check_jaeger(base: str) -> list[str]:
    problems = []
    known = set(get_json(f"{base}/api/services").get("data") or [])
    missing = {s.name for s in SERVICES} - known
    if missing:
        problems.append(f"jaeger: no spans yet from {', '.join(sorted(missing))}")
    query = urllib.parse.urlencode({"service": ENTRY, "limit": 50, "lookback": "1h"})
    traces = get_json(f"{base}/api/traces?{query}").get("data") or []
    wanted = order_path()
    crossing = [t for t in traces if wanted <= {p["serviceName"] for p in t["processes"].values()}]
    if not crossing:
        problems.append(
            f"jaeger: none of {len(traces)} traces from {ENTRY} crosses {sorted(wanted)}"
        )
    return problems


def prometheus_query(base: str, promql: str) -> dict[str, float]:
    """service label -> value, for an instant query."""
    query = urllib.parse.urlencode({"query": promql})
    answer = get_json(f"{base}/api/v1/query?{query}")
    return {r["metric"].get("service", "?"): float(r["value"][1]) for r in answer["data"]["result"]}


def check_prometheus(base: str) -> list[str]:
    problems = []
    expected = {s.name for s in SERVICES} | {LOAD_CLIENT}
    up = prometheus_query(base, f'up{{job="{JOB}"}}')
    down = sorted(name for name in expected if up.get(name) != 1.0)
    if down:
        problems.append(f"prometheus: not scraped (up != 1): {', '.join(down)}")
    rates = prometheus_query(
        base,
        f'sum by (service) (rate({{job="{JOB}", __name__=~"{REQUESTS}"}}[1m]))',
    )
    idle = sorted(s.name for s in SERVICES if rates.get(s.name, 0.0) <= 0)
    if idle:
        problems.append(f"prometheus: no request counters growing for {', '.join(idle)}")
    return problems


def run_checks(checks: dict[str, Callable[[], list[str]]], wait: float) -> list[str]:
    """Every check's problems, asked again every 2 s until none is left or `wait` is up."""
    deadline = time.monotonic() + wait
    while True:
        problems: list[str] = []
        for name, check in checks.items():
            try:
                problems += check()
            except (OSError, ValueError, KeyError, TypeError) as exc:
                problems.append(f"{name}: {type(exc).__name__}: {exc}")
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jaeger", default="http://localhost:16686")
    parser.add_argument("--prometheus", default="http://localhost:9090")
    parser.add_argument("--wait", type=float, default=120.0, help="give up after (s)")
    args = parser.parse_args(argv)
    problems = run_checks(
        {
            "jaeger": lambda: check_jaeger(args.jaeger),
            "prometheus": lambda: check_prometheus(args.prometheus),
        },
        args.wait,
    )
    for problem in problems:
        print(problem)
    if problems:
        sys.exit(1)
    print(f"ok: traces cross {', '.join(sorted(order_path()))}; every sidecar is scraped")


if __name__ == "__main__":
    main()
