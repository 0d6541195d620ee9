"""Compiles the data path's hot modules with mypyc (all other metadata is in pyproject.toml).

mypyc turns the typed modules below into C extensions: the same source, about 40 % less CPU
per proxied request (bench/hotpath.py). Set MESH_PURE_PYTHON=1 to install without
compiling; everything works the same, only slower.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

HOT_MODULES = [
    "mesh/inline.py",
    "mesh/stack.py",
    "mesh/cluster.py",
    "mesh/balance.py",
    "mesh/http1/body.py",
    "mesh/http1/message.py",
    # Not parse.py: httptools' stubs declare URL parts as bytes where they may be None,
    # and compiled code enforces declared types.
    "mesh/http1/deadlines.py",
    "mesh/http1/server.py",
    "mesh/http1/client.py",
    "mesh/http1/pool.py",
    "mesh/layers/rescue.py",
    "mesh/layers/access_log.py",
    "mesh/layers/forwarding.py",
    "mesh/layers/route.py",
    "mesh/layers/passthrough.py",
    "mesh/layers/deadline.py",
    "mesh/layers/balance.py",
    "mesh/layers/connect.py",
    "mesh/layers/authorize.py",
    "mesh/layers/client_cert.py",
    "mesh/layers/noop.py",
    # Resilience on every outbound request: the layers and the state machines they call.
    # Not resilience/retry.py (tenacity's strategy classes are subclassed there) nor
    # resilience/policy.py (pydantic reads those dataclasses as config schema).
    "mesh/layers/retry.py",
    "mesh/layers/healthy_balance.py",
    "mesh/layers/bulkhead.py",
    "mesh/layers/fault.py",
    "mesh/resilience/budget.py",
    "mesh/resilience/window.py",
    "mesh/resilience/breaker.py",
    "mesh/resilience/outlier.py",
    "mesh/resilience/bulkhead.py",
    "mesh/resilience/limits.py",
    "mesh/resilience/latency.py",
    "mesh/resilience/hop.py",
    # Request counters on every stack (read at scrape time by a collector, not compiled).
    "mesh/metrics/histogram.py",
    "mesh/metrics/requests.py",
    # Tracing on the request path: context parsing and injection, sampling, the layers.
    # (Export and encoding run on their own thread, off the request path.)
    "mesh/tracing/context.py",
    "mesh/tracing/propagation.py",
    "mesh/tracing/sampling.py",
    "mesh/tracing/tracer.py",
    "mesh/layers/trace_server.py",
    "mesh/layers/trace_outbound.py",
    "mesh/layers/trace_attempt.py",
]


def extensions() -> list:
    if os.environ.get("MESH_PURE_PYTHON"):
        return []
    from mypyc.build import mypycify

    # The project's mypy settings load plugins the isolated build env lacks (the hot
    # modules need none), and a cache left in the work tree must not stand in for the
    # build requirements: types come from the packages pyproject's build-system lists.
    options = ["--config-file", os.devnull, "--cache-dir", os.devnull]
    return mypycify([*options, *HOT_MODULES], opt_level="3")


if __name__ == "__main__":
    try:
        ext_modules = extensions()
    except Exception as exc:  # a missing compiler must not stop the install
        print(f"warning: not compiling the data path ({exc}); pure Python it is", file=sys.stderr)
        ext_modules = []
    setup(ext_modules=ext_modules)
