"""What tracing costs: the sidecar pair at sampling 0 %, 10 % and 100 % against tracing off.

Two parts, both in one run:

1. In memory (bench/hotpath.py's harness): CPU per request of one outbound hop, with tracing
   off and at each sampling ratio, the span queue exporting to a span file in the same
   process (so its thread's CPU is counted); then the off-path cost of one span, per export
   route (JSON line, SDK ReadableSpan + OTLP protobuf).
2. Real processes (bench/run.py's harness: nginx app, wrk, the same CPU pinning): the sidecar
   pair with tracing off and at 0/10/100 %, exporting over OTLP/HTTP to a local sink, measured
   interleaved in rounds; throughput and p99 as ratios to tracing off. A last contender
   exports at 10 % to a blackholed collector (accepts, never answers).

    .venv/bin/python bench/tracing.py                       # both parts, 3 rounds x 5 s
    .venv/bin/python bench/tracing.py --in-memory-only      # part 1 only (no tools needed)
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import hotpath, run
from mesh.tracing.export import FileExport, OtlpExport, OtlpHttpExport
from mesh.tracing.recorder import CLIENT, SpanRecord
from sidecar.config import SidecarConfig

RATIOS = (("trace-0", 0.0), ("trace-10", 0.1), ("trace-100", 1.0))
BAR_RATIO = 0.75  # at 10 % sampling the pair keeps at least 75 % of its untraced throughput


# -- part 1: in memory ------------------------------------------------------------------------
def in_memory(requests: int, connections: int, rounds: int) -> dict[str, float]:
    import uvloop

    run.log("in memory: CPU per request through one outbound hop (no sockets)")
    spans_dir = Path(tempfile.mkdtemp(prefix="mesh-trace-bench-"))
    configs: dict[str, SidecarConfig] = {"off": SidecarConfig(service="bench")}
    for name, ratio in RATIOS:
        configs[name] = SidecarConfig.model_validate(
            {
                "service": "bench",
                "tracing": {
                    "enabled": True,
                    "ratio": ratio,
                    "span_file": str(spans_dir / f"{name}.jsonl"),
                    "span_file_max_bytes": 64 * 1024 * 1024,
                    "queue_size": 100_000,
                },
            }
        )
    # The same 0 % hop, but the caller forwards an unsampled W3C context (the usual case
    # inside a mesh): it passes on as it came.
    configs["off-ctx"] = configs["off"]
    configs["trace-0-ctx"] = configs["trace-0"]
    plain = hotpath.REQUEST
    with_context = plain.replace(
        b"\r\n\r\n",
        b"\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\r\n\r\n",
    )
    results: dict[str, list[float]] = {name: [] for name in configs}
    try:
        for _ in range(rounds):
            for name, config in configs.items():
                hotpath.REQUEST = with_context if name.endswith("-ctx") else plain
                results[name].append(uvloop.run(hotpath.run(requests, connections, config=config)))
                run.log(f"  {name:<11} {results[name][-1]:6.2f} us CPU/request")
    finally:
        hotpath.REQUEST = plain
        shutil.rmtree(spans_dir, ignore_errors=True)
    medians = {name: sorted(v)[len(v) // 2] for name, v in results.items()}
    run.log("  median      us/req   vs off (the -ctx row: vs off-ctx)")
    for name, value in medians.items():
        base = medians["off-ctx" if name.endswith("-ctx") else "off"]
        run.log(f"  {name:<11} {value:6.2f}   {value - base:+6.2f} us")
    return medians


def per_span_costs(count: int = 5000) -> dict[str, float]:
    """Off-path CPU per span for each way out, measured on this thread."""
    record: SpanRecord = (
        CLIENT,
        b"4bf92f3577b34da6a3ce929d0e0e4736",
        b"00f067aa0ba902b7",
        b"a3ce929d0e0e4736",
        time.time_ns(),
        time.time_ns() + 1_000_000,
        b"GET",
        b"/hello?x=1",
        b"127.0.0.1:15001",
        200,
        "",
        "127.0.0.1:8080",
        1,
        b"http",
        b"",
        "app",
    )
    records = [record] * 512
    costs: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="mesh-span-cost-"))
    try:
        file_export = FileExport(tmp / "s.jsonl", "bench", 1 << 30)
        costs["json line (span file)"] = _timed(lambda: file_export.export(records), count)
        otlp = OtlpExport("http://127.0.0.1:9/v1/traces", "http/protobuf", {}, 0.1, {})
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        costs["SDK ReadableSpan"] = _timed(lambda: otlp.spans(records), count)
        spans = otlp.spans(records)
        costs["OTLP protobuf encode"] = _timed(
            lambda: encode_spans(spans).SerializeToString(), count
        )
        otlp.shutdown()
        direct = OtlpHttpExport("http://127.0.0.1:9/v1/traces", {}, 0.1, {"service.name": "b"})
        costs["direct protobuf encode"] = _timed(lambda: direct.encode(records), count)
        body = direct.encode(records)
        costs["gzip level 1"] = _timed(lambda: gzip.compress(body, compresslevel=1), count)
        direct.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    run.log("off the request path, CPU per span (export thread):")
    for what, us in costs.items():
        run.log(f"  {what:<24} {us:6.2f} us")
    return costs


def _timed(fn: Callable[[], object], spans: int) -> float:
    batches = max(1, spans // 512)
    started = time.process_time()
    for _ in range(batches):
        fn()
    return (time.process_time() - started) / (batches * 512) * 1e6


# -- part 2: real processes -------------------------------------------------------------------
class Sink:
    """A local OTLP/HTTP endpoint that accepts and discards (or, blackholed, never answers)."""

    def __init__(self, blackhole: bool = False) -> None:
        release = self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                if blackhole:
                    release.wait(600)
                    return
                self.rfile.read(int(self.headers.get("content-length", "0")))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer((run.LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{run.LOOPBACK}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def processes(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    run_args = run.parse_args(
        [
            *("--rounds", str(args.rounds), "--duration", str(args.duration)),
            *("--warmup", str(args.warmup), "--connections", str(args.connections)),
        ]
    )
    run.ensure_tools()
    run.raise_fd_limit(args.connections)
    run_args.wrk_cpu, server_cpu, pinning = run.choose_cpus(run_args)
    if run_args.wrk_cpu is not None:
        os.sched_setaffinity(0, {run_args.wrk_cpu})
    run.log(f"\nreal processes: wrk -> sidecar A -> sidecar B -> nginx app; pinning {pinning}")
    if os.getloadavg()[0] > 0.5:
        run.log(f"WARNING load average {os.getloadavg()[0]:.2f}: results will be noisy")
    sink, blackhole = Sink(), Sink(blackhole=True)
    procs = run.Processes(verbose=False)
    workdir = Path(tempfile.mkdtemp(prefix="mesh-trace-bench-"))
    workdir.chmod(0o755)
    setup = run.Setup(
        args=run_args, procs=procs, ports=run.Ports(), workdir=workdir, server_cpu=server_cpu
    )
    contenders: list[tuple[str, dict[str, str]]] = [("off", {})]
    for name, ratio in RATIOS:
        contenders.append(
            (name, {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_TRACES_SAMPLER_ARG": str(ratio)})
        )
    contenders.append(
        (
            "trace-10-down",
            {"OTEL_EXPORTER_OTLP_ENDPOINT": blackhole.url, "OTEL_TRACES_SAMPLER_ARG": "0.1"},
        )
    )
    rows = {name: run.Row(name, args.connections) for name, _ in contenders}
    try:
        setup.start_app()
        chains = {}
        for name, env in contenders:
            with environment({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", **env}):
                chains[name] = run.start_mesh_pair(setup, name, noop_layers=0, mtls=False)
            run.log(f"  {name:<14} {chains[name].description}")
        procs.remember_descendants()
        order = [name for name, _ in contenders]
        for round_no in range(1, args.rounds + 1):
            shift = (round_no - 1) % len(order)
            for name in order[shift:] + order[:shift]:
                chain = chains[name]
                if args.warmup:
                    run.run_wrk(setup, chain.port, args.connections, args.warmup, run_args.wrk_cpu)
                sample = run.measure(setup, chain, args.connections, round_no)
                rows[name].samples.append(sample)
                cpu = sample.per_request(sample.hop_cpu_ms) * 1e3
                run.log(
                    f"[round {round_no}/{args.rounds}] {name:<14} {sample.wrk.rps:>8.0f} req/s  "
                    f"p99 {sample.wrk.p99_ms:.3f} ms  CPU {cpu:.1f} us/req (both hops)"
                )
    finally:
        procs.stop_all()
        sink.close()
        blackhole.close()
        shutil.rmtree(workdir, ignore_errors=True)
    summaries = {name: run.summarize(row) for name, row in rows.items() if row.samples}
    base = summaries.get("off", {})
    run.log(
        f"\nmedian of {args.rounds} rounds, c={args.connections}; ratios to tracing off; "
        "CPU of both hops, and the difference per hop (A outbound, B inbound)"
    )
    run.log(
        f"  {'contender':<14} {'req/s':>8} {'ratio':>6} {'p99 ms':>8} {'ratio':>6} "
        f"{'CPU us/req':>10} {'+us':>6} {'A +us':>6} {'B +us':>6} {'by CPU':>6}"
    )
    for name, summary in summaries.items():
        by_cpu = run.ratio(server_cpu_per_request(base), server_cpu_per_request(summary))
        cpu = summary["cpu_ms_per_req"] * 1e3
        base_cpu = base["cpu_ms_per_req"] * 1e3
        run.log(
            f"  {name:<14} {summary['rps']:>8.0f} "
            f"{run.fmt_ratio(run.ratio(summary['rps'], base['rps'])):>6} "
            f"{summary['p99_ms']:>8.3f} "
            f"{run.fmt_ratio(run.ratio(summary['p99_ms'], base['p99_ms'])):>6} "
            f"{cpu:>10.1f} {cpu - base_cpu:>+6.1f} "
            f"{(summary['cpu_ms_per_req_hop_a'] - base['cpu_ms_per_req_hop_a']) * 1e3:>+6.1f} "
            f"{(summary['cpu_ms_per_req_hop_b'] - base['cpu_ms_per_req_hop_b']) * 1e3:>+6.1f} "
            f"{run.fmt_ratio(by_cpu):>6}"
        )
    run.log(
        "  by CPU: the throughput ratio the server CPU allows (app + both hops per request),\n"
        "  less sensitive to other work on the machine than req/s"
    )
    kept = run.ratio(summaries.get("trace-10", {}).get("rps"), base.get("rps"))
    verdict = "PASS" if kept is not None and kept >= BAR_RATIO else "FAIL"
    run.log(
        f"\nbar: at 10 % sampling the pair keeps >= {BAR_RATIO:.0%} of its untraced "
        f"throughput: {run.fmt_ratio(kept)} {verdict}"
    )
    return summaries


def server_cpu_per_request(summary: dict[str, Any]) -> float:
    """CPU per request on the server CPU: the app and both hops."""
    return float(summary["cpu_ms_per_req"]) + float(summary["app_cpu_ms_per_req"] or 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000, help="in-memory requests")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--in-memory-only", action="store_true")
    args = parser.parse_args()
    from sidecar.cli import tune_gc

    tune_gc()
    in_memory(args.requests, 64, args.rounds)
    per_span_costs()
    if not args.in_memory_only:
        socket.setdefaulttimeout(10)
        processes(args)


if __name__ == "__main__":
    main()
