"""grafana/ holds what Grafana's provisioning loads, and rule files promtool accepts.

Every dashboard is JSON with the fields provisioning needs (uid, title, schemaVersion,
panels with ids, grid positions, a data source and queries), uids unique across files,
every template variable a query uses is defined, and every data source a panel names is
provisioned. The rule files pass `promtool check rules`.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.metrics.dashboards import DASHBOARDS, GRAFANA, RULE_FILES, load, panels, variables
from tests.metrics.prometheus import promtool_next_to

pytestmark = pytest.mark.timeout(120)

BUILT_IN = {"__rate_interval", "__interval", "__range", "__field"}


def provisioned_datasources() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        assert data["apiVersion"] == 1
        for source in data["datasources"]:
            found[source["uid"]] = source
    return found


def test_the_three_dashboards_exist() -> None:
    uids = [load(path)["uid"] for path in DASHBOARDS]
    assert sorted(uids) == ["mesh-overview", "mesh-service", "mesh-sidecar"]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_has_what_provisioning_needs(path: Any) -> None:
    dashboard = load(path)
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time", "version"):
        assert key in dashboard, f"{path.name}: no {key}"
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 30
    sources = provisioned_datasources()
    defined = {v["name"] for v in variables(dashboard)}
    for variable in variables(dashboard):
        assert variable["type"] == "query" and variable["query"]
        assert variable["datasource"]["uid"] in sources
    ids = []
    for panel in panels(dashboard):
        ids.append(panel["id"])
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys() and grid["x"] + grid["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in sources, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["refId"] and target["expr"]
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= defined | BUILT_IN, f"{panel['title']}: undefined {used - defined}"
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"


def test_provisioning_points_at_prometheus_jaeger_and_the_dashboards() -> None:
    sources = provisioned_datasources()
    assert sources["prometheus"]["type"] == "prometheus"
    assert sources["jaeger"]["type"] == "jaeger"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/mesh.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    # Trace links go to the provisioned Jaeger.
    links = []
    for path in DASHBOARDS:
        for panel in panels(load(path)):
            data_links = panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])
            links += [link["url"] for link in panel.get("links", []) + data_links]
    assert links and all("jaeger" in url for url in links)


def test_rule_files_pass_promtool(prometheus_binary: str) -> None:
    assert RULE_FILES
    done = subprocess.run(
        [promtool_next_to(prometheus_binary), "check", "rules", *map(str, RULE_FILES)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
