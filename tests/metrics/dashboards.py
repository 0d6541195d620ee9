"""The dashboards under grafana/: their panels' queries, and template variables filled in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.processes import REPO

GRAFANA = REPO / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULE_FILES = sorted((GRAFANA / "prometheus").glob("*.yml"))


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(path: Path) -> Iterator[PanelQuery]:
    dashboard = load(path)
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield PanelQuery(dashboard["uid"], panel["title"], target["refId"], target["expr"])


def variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return list(dashboard.get("templating", {}).get("list", []))


def substitute(expr: str, values: dict[str, str], rate_interval: str) -> str:
    """What Grafana sends: variables replaced (longest names first), built-ins fixed."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr
