"""CPU per request of one sidecar hop without sockets: where the Python time goes.

Feeds requests into a real `ServerConnection` running a real outbound stack whose upstream
connections sit on in-memory transports that answer at once. What remains is the proxy's
own work (parsing, layers, serialisation, event-loop wakeups), measured as process CPU time,
so it stays meaningful on a busy machine. Complements bench/run.py, which measures the
whole system with real sockets against nginx and haproxy.

    .venv/bin/python bench/hotpath.py [--requests 200000] [--connections 64] [--noop-layers 0]
    .venv/bin/python bench/hotpath.py --instructions     # exact, under valgrind (slow)

`--instructions` counts machine instructions per request instead of timing: the program runs
twice under callgrind (N and 3N requests) and the difference is divided by 2N, so start-up
cancels out. The count does not move with the machine's load, which makes it the measure for
small changes; time still decides (an instruction is not a cycle).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from discovery.endpoint import Endpoint, EndpointSet
from mesh.cluster import Cluster
from mesh.http1.client import UpstreamConnection
from mesh.http1.pool import EndpointPool
from mesh.http1.server import ConnectionTracker, ServerConnection
from mesh.metrics.requests import RequestMetrics
from sidecar import stacks
from sidecar.config import SidecarConfig

REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:15001\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 26 Nov 2026 19:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
    b"hello world\n"
)


class MemoryTransport:
    """Just enough of asyncio.Transport for the protocols; `on_write` plays the peer."""

    def __init__(self, on_write: Any) -> None:
        self.on_write = on_write
        self.closing = False

    def write(self, data: bytes) -> None:
        self.on_write(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class MemoryPool(EndpointPool):
    """A pool whose connections answer every request with RESPONSE on the next loop turn."""

    async def connect(self, deadline: float | None = None) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        conn = UpstreamConnection(self)
        conn.connection_made(
            MemoryTransport(lambda data: loop.call_soon(conn.data_received, RESPONSE))  # type: ignore[arg-type]
        )
        self._all.add(conn)
        return conn


def memory_cluster(config: SidecarConfig) -> Cluster:
    cluster = Cluster(
        "app", lambda e: MemoryPool(e.host, e.port, config.pool.policy(), 1.0), lambda e: False
    )
    cluster.update(EndpointSet("app", (Endpoint("127.0.0.1", 15001),)))
    return cluster


class Services:
    def __init__(self, config: SidecarConfig) -> None:
        cluster = memory_cluster(config)
        upstream = stacks.upstream_stack(config, cluster, config.policy_book())
        # As a sidecar ships: every upstream's requests counted for /metrics.
        self._stack = RequestMetrics("bench").observe(upstream.handler, "outbound", "app")

    def knows(self, service: str) -> bool:
        return service == "app"

    def stack(self, service: str) -> Any:
        return self._stack


#: `--bare`: the data path without resilience layers (one attempt, no breakers).
BARE: dict[str, Any] = {"retry": {"max_retries": 0}, "outlier": {"enabled": False}}


def inbound_handler(config: SidecarConfig) -> Any:
    """The inbound side as a sidecar ships it (plain listener): its stack, counted."""
    inbound = stacks.inbound_stack(config, memory_cluster(config))
    return RequestMetrics("bench").observe(inbound.handler, "inbound", "bench")


async def run(
    requests: int,
    connections: int,
    bare: bool = False,
    config: SidecarConfig | None = None,
    inbound: bool = False,
) -> float:
    loop = asyncio.get_running_loop()
    config = config or SidecarConfig.model_validate(
        {"service": "bench", **({"resilience": BARE} if bare else {})}
    )
    if inbound:
        handler = inbound_handler(config)
    else:
        handler = stacks.outbound_stack(config, Services(config).stack("app"))
    tracker = ConnectionTracker(config.limits.policy())
    remaining = requests
    done = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    def spawn(fn: Any) -> None:
        tasks.add(asyncio.ensure_future(fn()))

    def client(conn: ServerConnection) -> Any:
        def on_response(data: bytes) -> None:
            nonlocal remaining
            if not data.startswith(b"HTTP/1.1 "):
                return  # the rest of a response already counted
            remaining -= 1
            if remaining <= 0:
                done.set()
            elif remaining >= connections:
                loop.call_soon(conn.data_received, REQUEST)

        return on_response

    started = time.process_time()
    for _ in range(connections):
        conn = ServerConnection(handler, tracker)
        conn.connection_made(MemoryTransport(client(conn)))  # type: ignore[arg-type]
        loop.call_soon(conn.data_received, REQUEST)
    await done.wait()
    used = time.process_time() - started
    for task in tasks:
        task.cancel()
    return used / requests * 1e6


def count_instructions(requests: int, passthrough: list[str]) -> float:
    """Instructions per request: callgrind runs of `requests` and 3x `requests`, diffed."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind (Debian package `valgrind`)")
    totals = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (requests, 3 * requests):
            out = subprocess.run(
                [
                    valgrind, "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
                    sys.executable, __file__, "--requests", str(n), *passthrough,
                ],
                capture_output=True, text=True, check=True, timeout=1800,
            )  # fmt: skip
            found = re.search(r"Collected : (\d+)", out.stderr)
            if found is None:
                raise SystemExit(f"no instruction count from valgrind:\n{out.stderr[-2000:]}")
            totals.append(int(found.group(1)))
    return (totals[1] - totals[0]) / (2 * requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--noop-layers", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary")
    parser.add_argument("--bare", action="store_true", help="no retries, no breakers")
    parser.add_argument(
        "--inbound", action="store_true", help="the inbound side (caller -> sidecar -> app)"
    )
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions under valgrind instead"
    )
    args = parser.parse_args()
    if args.instructions:
        passthrough = ["--connections", str(args.connections)]
        passthrough += ["--noop-layers", str(args.noop_layers)] + (["--bare"] if args.bare else [])
        passthrough += ["--inbound"] if args.inbound else []
        per_request = count_instructions(min(args.requests, 5000), passthrough)
        print(
            f"{per_request:.0f} instructions per request through one hop (no sockets), "
            f"{args.noop_layers} no-op layers, {'inbound' if args.inbound else 'outbound'}"
            f"{', bare (no resilience)' if args.bare else ', resilience at its defaults'}"
        )
        return
    os.environ["MESH_BENCH_NOOP_LAYERS"] = str(args.noop_layers)
    import uvloop

    from sidecar.cli import tune_gc

    tune_gc()  # as `mesh sidecar` does

    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        uvloop.run(run(args.requests, args.connections, args.bare, inbound=args.inbound))
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    us = uvloop.run(run(args.requests, args.connections, args.bare, inbound=args.inbound))
    print(
        f"{us:.2f} us CPU per request through one hop (no sockets), "
        f"{args.noop_layers} no-op layers, {args.connections} connections, "
        f"{'inbound' if args.inbound else 'outbound'}"
        f"{', bare (no resilience)' if args.bare else ', resilience at its defaults'}"
    )


if __name__ == "__main__":
    main()
