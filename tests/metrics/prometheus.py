"""A real Prometheus server for tests: installed like Consul, run on loopback, stopped by PID.

`install_prometheus()` runs scripts/install-prometheus.sh (Debian's package, unpacked into
.cache). `PrometheusServer` writes its own config (short scrape and rule intervals so tests
stay fast), starts the binary with a throw-away TSDB, and queries the HTTP API.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.processes import REPO, free_port, http_get, wait_until

INSTALL_SCRIPT = REPO / "scripts" / "install-prometheus.sh"
INSTALL_TIMEOUT = 100.0


def install_prometheus() -> str:
    """Path of a runnable prometheus binary, fetched if needed; RuntimeError saying why not."""
    try:
        done = subprocess.run(
            [str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{INSTALL_SCRIPT} could not run: {exc}") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"{INSTALL_SCRIPT} failed (exit {done.returncode}):\n{tail}")
    return lines[-1]


def promtool_next_to(prometheus: str) -> str:
    """Debian's package ships promtool beside prometheus (else the one on PATH)."""
    beside = Path(prometheus).with_name("promtool")
    return str(beside) if beside.exists() else shutil.which("promtool") or str(beside)


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    try:
        return install_prometheus()
    except RuntimeError as exc:
        if os.environ.get("MESH_ALLOW_SKIP_PROMETHEUS") == "1":
            pytest.skip(f"no Prometheus available (MESH_ALLOW_SKIP_PROMETHEUS=1): {exc}")
        pytest.fail(f"no Prometheus available: {exc}", pytrace=False)


class PrometheusServer:
    def __init__(
        self,
        binary: str,
        workdir: Path,
        targets: dict[str, list[str]],
        rule_files: Sequence[Path] = (),
        interval: str = "500ms",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addresses}]}
                for job, addresses in targets.items()
            ],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
            try:
                return http_get(f"{self.url}/-/ready", timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout, "prometheus to become ready", step=0.1)

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        status, _, body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=10)
        data = json.loads(body)
        if status != 200 or data.get("status") != "success":
            raise AssertionError(f"{path} {params}: {status} {data}")
        return data["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (or matrix/scalar wrapped as a list)."""
        data = self.api("query", query=expr)
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def value(self, expr: str) -> float | None:
        """The single value of a query that should return one series, None when empty."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr} returned {len(result)} series"
        return float(result[0]["value"][1])

    def wait_value(self, expr: str, expected: float, timeout: float = 10.0) -> None:
        seen: list[float | None] = []

        def equal() -> bool:
            seen.append(self.value(expr))
            return seen[-1] == expected

        try:
            wait_until(equal, timeout, f"{expr} == {expected}", step=0.2)
        except AssertionError:
            raise AssertionError(f"{expr}: expected {expected}, last {seen[-1:]}") from None

    def targets_up(self) -> Iterator[tuple[str, str]]:
        for target in self.api("targets")["activeTargets"]:
            yield target["scrapeUrl"], target["health"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _unix(rfc3339: str) -> float:
    """Prometheus' lastScrape (nanosecond RFC 3339) as Unix time."""
    trimmed = re.sub(r"(\.\d{6})\d*", r"\1", rfc3339).replace("Z", "+00:00")
    return dt.datetime.fromisoformat(trimmed).timestamp()


def wait_scraped_after(server: PrometheusServer, since: float, timeout: float = 10.0) -> None:
    """Every target has been scraped (successfully) since `since` (Unix time)."""

    def fresh() -> bool:
        targets = server.api("targets")["activeTargets"]
        return all(t["health"] == "up" and _unix(t["lastScrape"]) > since for t in targets)

    wait_until(fresh, timeout, "a scrape of every target after the traffic", step=0.1)


def wait_scraped(server: PrometheusServer, count: int, timeout: float = 15.0) -> None:
    """Every target scraped successfully at least once."""

    def all_up() -> bool:
        states = list(server.targets_up())
        return len(states) == count and all(h == "up" for _, h in states)

    wait_until(all_up, timeout, f"{count} targets up in prometheus", step=0.2)
