"""Fixtures for the tracing tests: sidecars with tracing on, next to test apps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.processes import MeshProcess, Sidecars, free_port, write_yaml


def traced_sidecar(
    sidecars: Sidecars,
    workdir: Path,
    name: str,
    *,
    tracing: dict[str, Any],
    app_port: int | None = None,
    upstreams: dict[str, int] | None = None,
    catalog: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[MeshProcess, int]:
    """A sidecar for service `name` with the given `tracing:` section; (process, inbound port)."""
    listen = free_port()
    config: dict[str, Any] = {"service": name, "tracing": tracing, **(extra or {})}
    args = ["--config", str(write_yaml(workdir / f"{name}.yaml", config))]
    if app_port is not None:
        args += ["--app-port", str(app_port), "--listen", f"127.0.0.1:{listen}"]
    for service, port in (upstreams or {}).items():
        args += ["--upstream", f"{service}={port}"]
    if catalog is not None:
        args += ["--catalog", str(catalog)]
    return sidecars.start(*args, name=name), listen
