"""The compose demo: a valid compose file, made from the same description as the local demo.

No Docker engine runs here, so images and container start-up are not exercised; what can be
checked is: the committed files are what the topology generates, docker-compose (Debian's
package) accepts the file, and the mesh it describes (services, calls, sidecars sharing their
app's network namespace, authorization, start-up order) is the local demo's mesh.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import build
from sidecar.demo import compose, local
from sidecar.demo.topology import ENTRY, FAULTY, LOAD_CLIENT, SERVICES, edges
from tests.support.processes import REPO

pytestmark = pytest.mark.timeout(60)

COMPOSE_DIR = REPO / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
INFRA = {"consul", "jaeger", "prometheus", "grafana", "certs"}


@functools.cache
def resolved_compose() -> dict[str, Any]:
    """The compose file as docker-compose itself reads it (interpolated, normalised)."""
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is not installed: run scripts/install-tools"
    done = subprocess.run(
        [tool, "--project-directory", str(COMPOSE_DIR), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = yaml.safe_load(done.stdout)
    return data


def test_committed_files_are_what_the_topology_generates() -> None:
    for relative, text in compose.render().items():
        path = COMPOSE_DIR / relative
        assert path.exists(), f"{path} missing: run python -m sidecar.demo.compose"
        assert path.read_text() == text, f"{path} is stale: run python -m sidecar.demo.compose"


def test_docker_compose_accepts_the_file() -> None:
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is not installed: run scripts/install-tools"
    done = subprocess.run(
        [tool, "config", "-q"], cwd=COMPOSE_DIR, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_compose_mesh_is_the_local_demos_mesh(tmp_path: Path) -> None:
    """Same processes, same calls, same routes, same switch, same sidecar policies."""
    services = resolved_compose()["services"]
    launches = {launch.run.name: launch for launch in local.plan_local(tmp_path)}
    apps = {name for name in services if name not in INFRA and not name.endswith("-sidecar")}
    assert apps == set(launches) == {s.name for s in SERVICES} | {LOAD_CLIENT}

    def calls(env: dict[str, str]) -> set[str]:
        return {c for c in env.get("DEMO_CALLS", "").split(",") if c}

    compose_edges = {(n, c) for n in apps for c in calls(services[n].get("environment", {}))}
    local_edges = {(n, c) for n, launch in launches.items() for c in calls(launch.env)}
    load_edge = {(LOAD_CLIENT, ENTRY)}
    assert compose_edges | load_edge == local_edges | load_edge == edges()
    compose_env, local_env = services[ENTRY]["environment"], launches[ENTRY].env
    assert compose_env["DEMO_ROUTES"] == local_env["DEMO_ROUTES"]
    assert services[FAULTY]["environment"]["DEMO_MODE"] == "ok"  # PAYMENTS_MODE unset
    assert "DEMO_MODE_FILE" in services[FAULTY]["environment"]
    assert "DEMO_MODE_FILE" in launches[FAULTY].env
    for name, launch in launches.items():
        in_compose = yaml.safe_load((COMPOSE_DIR / "sidecars" / f"{name}.yaml").read_text())
        for key in ("service", "authorization", "passthrough", "access_log"):
            assert in_compose.get(key) == launch.config.get(key), (name, key)
        assert set(in_compose["tls"]) == set(launch.config["tls"])


def test_each_sidecar_shares_its_apps_network_and_starts_after_what_it_needs() -> None:
    services = resolved_compose()["services"]
    for spec in SERVICES:
        sidecar = services[f"{spec.name}-sidecar"]
        assert sidecar["network_mode"] == f"service:{spec.name}"
        needs = {name: dep["condition"] for name, dep in sidecar["depends_on"].items()}
        assert needs == {
            spec.name: "service_healthy",
            "consul": "service_healthy",
            "certs": "service_completed_successfully",
            "jaeger": "service_started",
        }
        assert "healthcheck" in sidecar and "healthcheck" in services[spec.name]
        # The app listens on loopback (its default): only its sidecar reaches it.
        assert "DEMO_HOST" not in services[spec.name]["environment"]
    load = services[LOAD_CLIENT]["depends_on"]
    assert all(load[f"{s.name}-sidecar"]["condition"] == "service_healthy" for s in SERVICES)
    assert services["certs"]["depends_on"]["consul"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_sidecar_configs_are_valid_and_authorize_exactly_the_call_graph() -> None:
    allowed: set[tuple[str, str]] = set()
    for spec in SERVICES:
        path = COMPOSE_DIR / "sidecars" / f"{spec.name}.yaml"
        config = build(path, {}, environ={})  # the sidecar's own loader and validation
        assert config.tls is not None and config.consul.address == compose.CONSUL
        assert config.authorization.default == "deny"
        allowed |= {(caller, spec.name) for caller in config.authorization.allow}
    assert allowed == edges()
    assert build(COMPOSE_DIR / "sidecars" / f"{LOAD_CLIENT}.yaml", {}, environ={}).tls


def test_images_are_pinned_and_grafana_is_provisioned_from_the_repo() -> None:
    services = resolved_compose()["services"]
    images = {name: s["image"] for name, s in services.items()}
    assert re.fullmatch(r"hashicorp/consul:1\.2\d\.\d+", images["consul"])
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", images["jaeger"])
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", images["prometheus"])
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", images["grafana"])
    assert "-dev" in services["consul"]["command"] and "-ui" in services["consul"]["command"]
    # docker-compose 1.x prints volumes as SOURCE:TARGET:MODE, with SOURCE made absolute.
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == str(REPO / "grafana" / "provisioning")
    assert mounts["/var/lib/grafana/dashboards"] == str(REPO / "grafana" / "dashboards")
    assert (COMPOSE_DIR / "Dockerfile").exists()


def test_prometheus_scrapes_every_sidecar() -> None:
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = {
        t["labels"]["service"]: t["targets"]
        for job in config["scrape_configs"]
        for t in job["static_configs"]
    }
    assert set(targets) == {s.name for s in SERVICES} | {LOAD_CLIENT}
    assert all(t == [f"{name}:{compose.ADMIN_PORT}"] for name, t in targets.items())
