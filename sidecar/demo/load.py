"""The demo's load generator: GETs to the entry through the caller's own sidecar, bounded.

It is a mesh client like any app: requests go to `http://<entry>/<path>` through a sidecar's
proxy port, which speaks mTLS to the entry under the load generator's identity. It cycles
through one path per route so every service sees traffic. The local demo runs `send_load`
in its own process; the compose demo runs `python -m sidecar.demo.load` under `mesh attach`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpcore

from sidecar.demo.topology import ENTRY, LOAD_PATHS

#: What one request may take before the load counts it as a timeout.
TIMEOUTS = {"connect": 5.0, "pool": 5.0, "read": 15.0, "write": 5.0}


@dataclass
class Stats:
    """What the load saw, end to end."""

    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    #: Per path, the last answer's body: the call tree the apps report.
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def p99_ms(self) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


async def send_one(pool: httpcore.AsyncConnectionPool, path: str, stats: Stats) -> int:
    """One request; its outcome counted in `stats`. The status, or 0 without a response."""
    started = time.monotonic()
    stats.sent += 1
    status = 0
    try:
        resp = await pool.request("GET", f"http://{ENTRY}{path}", extensions={"timeout": TIMEOUTS})
        status = resp.status
        if status == 200:
            stats.ok += 1
        else:
            reason = dict(resp.headers).get(b"x-mesh-error", b"app").decode()
            stats.count_error(f"{status} {reason}")
        with contextlib.suppress(ValueError):
            stats.answers[path] = json.loads(resp.content)
    except httpcore.TimeoutException:
        stats.count_error("timeout")
    except httpcore.NetworkError as exc:
        stats.count_error(type(exc).__name__)
    stats.latencies.append(time.monotonic() - started)
    return status


async def send_load(pool: httpcore.AsyncConnectionPool, rps: float, stats: Stats) -> None:
    """Until cancelled: `rps` requests a second, one at a time, cycling through the paths."""
    interval = 1.0 / rps
    while True:
        for path in LOAD_PATHS:
            started = time.monotonic()
            await send_one(pool, path, stats)
            await anyio.sleep(max(0.0, interval - (time.monotonic() - started)))


def proxy(url: str) -> httpcore.AsyncHTTPProxy:
    return httpcore.AsyncHTTPProxy(proxy_url=url, max_connections=8)


async def _run(proxy_url: str, rps: float, duration: float, every: float) -> int:
    stats = Stats()
    async with proxy(proxy_url) as pool:
        with anyio.move_on_after(duration):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_load, pool, rps, stats)
                while True:
                    await anyio.sleep(every)
                    print(f"load: sent {stats.sent} ok {stats.ok} errors {stats.errors or 'none'}"
                          f" p99 {stats.p99_ms():.1f} ms", flush=True)  # fmt: skip
                    stats.latencies = stats.latencies[-5000:]
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proxy", default=os.environ.get("HTTP_PROXY"), help="sidecar proxy URL")
    parser.add_argument("--rps", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=3600.0, help="stop after (s)")
    parser.add_argument("--every", type=float, default=10.0, help="report interval (s)")
    args = parser.parse_args(argv)
    if not args.proxy:
        parser.error("--proxy or HTTP_PROXY is required")
    raise SystemExit(anyio.run(_run, args.proxy, args.rps, args.duration, args.every))


if __name__ == "__main__":
    main()
