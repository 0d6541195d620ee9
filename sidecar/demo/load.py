"""The demo's load generator: GETs to the gateway's public listener, bounded.

It is an outside client, as a browser would be: plain HTTP to the one address the mesh
publishes (`--url`, the gateway), no identity of its own. It cycles through one path per
route so every service sees traffic. The local demo runs `send_load` in its own process; the
compose demo runs `python -m sidecar.demo.load --url http://gateway:8080`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpcore

from sidecar.demo.topology import LOAD_PATHS

#: What one request may take before the load counts it as a timeout.
TIMEOUTS = {"connect": 5.0, "pool": 5.0, "read": 15.0, "write": 5.0}


@dataclass
class Stats:
    """What the load saw, end to end."""

    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    #: Per path, the last answer from an app (its body, with the status the gateway sent and
    #: the time the whole exchange took): the call tree the apps report.
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def p99_ms(self) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


async def send_one(pool: httpcore.AsyncConnectionPool, url: str, path: str, stats: Stats) -> int:
    """One request to `url` + `path`; its outcome counted in `stats`. The status, or 0
    without a response."""
    started = time.monotonic()
    stats.sent += 1
    status = 0
    try:
        resp = await pool.request("GET", url + path, extensions={"timeout": TIMEOUTS})
        status = resp.status
        if status == 200:
            stats.ok += 1
        else:
            reason = dict(resp.headers).get(b"x-mesh-error", b"app").decode()
            stats.count_error(f"{status} {reason}")
        with contextlib.suppress(ValueError):
            answer = json.loads(resp.content)
            if isinstance(answer, dict) and "service" in answer:
                ms = round((time.monotonic() - started) * 1000, 1)
                stats.answers[path] = {**answer, "status": status, "ms": ms}
    except httpcore.TimeoutException:
        stats.count_error("timeout")
    except httpcore.NetworkError as exc:
        stats.count_error(type(exc).__name__)
    stats.latencies.append(time.monotonic() - started)
    return status


async def send_load(pool: httpcore.AsyncConnectionPool, url: str, rps: float, stats: Stats) -> None:
    """Until cancelled: `rps` requests a second, one at a time, cycling through the paths."""
    interval = 1.0 / rps
    while True:
        for path in LOAD_PATHS:
            started = time.monotonic()
            await send_one(pool, url, path, stats)
            await anyio.sleep(max(0.0, interval - (time.monotonic() - started)))


def client() -> httpcore.AsyncConnectionPool:
    return httpcore.AsyncConnectionPool(max_connections=8)


async def _run(url: str, rps: float, duration: float, every: float) -> int:
    stats = Stats()
    async with client() as pool:
        with anyio.move_on_after(duration):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_load, pool, url, rps, stats)
                while True:
                    await anyio.sleep(every)
                    print(f"load: sent {stats.sent} ok {stats.ok} errors {stats.errors or 'none'}"
                          f" p99 {stats.p99_ms():.1f} ms", flush=True)  # fmt: skip
                    stats.latencies = stats.latencies[-5000:]
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the gateway, e.g. http://gateway:8080")
    parser.add_argument("--rps", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=3600.0, help="stop after (s)")
    parser.add_argument("--every", type=float, default=10.0, help="report interval (s)")
    args = parser.parse_args(argv)
    raise SystemExit(anyio.run(_run, args.url.rstrip("/"), args.rps, args.duration, args.every))


if __name__ == "__main__":
    main()
