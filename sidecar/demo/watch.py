"""What each demo service sees, read from its sidecar's access log; and the call tree.

Every sidecar writes one JSON line per request (`access_log: true`) into its service's log
file. Tailing those files gives per-service numbers without asking the services anything:
inbound requests, errors (5xx) and their reasons, and latencies.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Seconds of history behind the live view's requests/s and p99.
WINDOW = 5.0


@dataclass
class ServiceLog:
    name: str
    path: Path
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    #: (arrival time, duration in ms, is error) of recent inbound requests.
    recent: deque[tuple[float, float, bool]] = field(default_factory=deque)
    _offset: int = 0
    _partial: bytes = b""

    def read(self) -> None:
        """Take in the lines written since the last read."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        now = time.monotonic()
        for line in lines:
            if line.startswith(b"{"):
                self._record(line, now)
        while self.recent and self.recent[0][0] < now - WINDOW:
            self.recent.popleft()

    def _record(self, line: bytes, now: float) -> None:
        try:
            entry: dict[str, Any] = json.loads(line)
        except ValueError:
            return
        if entry.get("direction") != "inbound":
            return
        status = int(entry.get("status") or 0)
        # Status 0: no response was sent, as when the caller went away (the load stopping).
        failed = status >= 500
        self.requests += 1
        if failed:
            self.errors[f"{status} {entry.get('mesh_error') or 'app'}"] += 1
        self.recent.append((now, float(entry.get("duration_ms") or 0), failed))

    def rate(self) -> float:
        return len(self.recent) / WINDOW

    def recent_errors(self) -> int:
        return sum(1 for _, _, failed in self.recent if failed)

    def p99_ms(self) -> float:
        durations = sorted(d for _, d, _ in self.recent)
        if not durations:
            return 0.0
        return durations[min(len(durations) - 1, int(len(durations) * 0.99))]


def table(
    logs: list[ServiceLog], live: bool, states: dict[str, list[UpstreamState]] | None = None
) -> list[str]:
    """Per service: live (the last few seconds) or totals (the whole run). Retries are those
    the service's sidecar made to its upstreams; breakers, its upstreams not closed."""
    states = states or {}
    if live:
        lines = [f"  {'service':<14}{'req/s':>7}{'errors':>8}{'p99 ms':>9}{'retries':>9}  breakers"]
        for s in logs:
            mine = states.get(s.name, [])
            retries = sum(u.retries for u in mine)
            lines.append(
                f"  {s.name:<14}{s.rate():>7.1f}{s.recent_errors():>8}{s.p99_ms():>9.1f}"
                f"{retries:>9}  {breakers_text(mine)}"
            )
        return lines
    lines = [f"  {'service':<14}{'requests':>9}{'errors':>8}  reasons"]
    for s in logs:
        reasons = ", ".join(f"{k} x{n}" for k, n in s.errors.most_common()) or "-"
        lines.append(f"  {s.name:<14}{s.requests:>9}{sum(s.errors.values()):>8}  {reasons}")
    return lines


def call_tree(root: str, status: int, answer: dict[str, Any]) -> list[str]:
    """One request's path through the mesh, as the apps reported it, drawn as a tree."""
    lines = [f"  {root} {status}"]

    def walk(calls: list[dict[str, Any]], indent: str) -> None:
        for i, node in enumerate(calls):
            last = i == len(calls) - 1
            outcome = str(node.get("status", node.get("error", "?")))
            if node.get("mesh_error"):
                outcome += f" x-mesh-error: {node['mesh_error']}"
            ms = node.get("ms")
            timing = f"  {ms} ms" if ms is not None else ""
            lines.append(
                f"  {indent}{'└─' if last else '├─'} {node.get('service')} {outcome}{timing}"
            )
            walk(node.get("calls") or [], indent + ("   " if last else "│  "))

    walk(answer.get("calls") or [], "")
    return lines


@dataclass(frozen=True)
class UpstreamState:
    """What one sidecar's resilience did for one upstream (from its admin /clusters)."""

    caller: str
    upstream: str
    retries: int
    refused: int
    ejections: int
    #: Endpoints whose breaker is not closed: "open" or "half-open" (ejected, or probing).
    breakers: tuple[str, ...]


def upstream_states(caller: str, clusters: dict[str, Any]) -> list[UpstreamState]:
    states = []
    for name, cluster in clusters.items():
        resilience = cluster.get("resilience") if isinstance(cluster, dict) else None
        if not isinstance(resilience, dict) or "retry" not in resilience:
            continue  # the local app's cluster, or a sidecar without resilience
        retry = resilience["retry"]
        endpoints = resilience.get("outlier", {}).get("endpoints", {})
        states.append(
            UpstreamState(
                caller,
                name,
                int(retry.get("retries_total", 0)),
                int(retry.get("budget", {}).get("refused_total", 0)),
                sum(int(e.get("ejections_total", 0)) for e in endpoints.values()),
                tuple(e["state"] for e in endpoints.values() if e.get("state") != "closed"),
            )
        )
    return states


def breakers_text(states: list[UpstreamState]) -> str:
    """A caller's upstreams whose breakers are not all closed, e.g. `payments:open`."""
    return " ".join(f"{s.upstream}:{'/'.join(s.breakers)}" for s in states if s.breakers) or "-"


def resilience_table(states: list[UpstreamState]) -> list[str]:
    """Every caller -> upstream pair where a retry, refusal or ejection happened."""
    busy = [s for s in states if s.retries or s.refused or s.ejections or s.breakers]
    if not busy:
        return ["  no retries, no ejections"]
    lines = [f"  {'caller -> upstream':<26}{'retries':>8}{'refused':>8}{'ejections':>10}  breaker"]
    for s in busy:
        pair = f"{s.caller} -> {s.upstream}"
        state = "/".join(s.breakers) or "closed"
        lines.append(f"  {pair:<26}{s.retries:>8}{s.refused:>8}{s.ejections:>10}  {state}")
    return lines
