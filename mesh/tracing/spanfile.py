"""Reading span files back (`FileExport`'s JSON lines) and arranging spans as trace trees."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SpanNode:
    span: dict[str, Any]
    children: list[SpanNode] = field(default_factory=list)


@dataclass
class Trace:
    trace_id: str
    spans: list[dict[str, Any]]
    roots: list[SpanNode]

    @property
    def start_ns(self) -> int:
        return min(int(s["start_ns"]) for s in self.spans)

    @property
    def end_ns(self) -> int:
        return max(int(s["end_ns"]) for s in self.spans)

    @property
    def error(self) -> bool:
        return any(s.get("status") == "error" for s in self.spans)


def span_files(directory: Path) -> list[Path]:
    """Current files and their rotated generation (`*.jsonl.1`)."""
    return sorted([*directory.glob("*.jsonl"), *directory.glob("*.jsonl.1")])


def read_spans(files: Iterable[Path]) -> list[dict[str, Any]]:
    spans = []
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            try:
                span = json.loads(line)
            except ValueError:
                continue  # a line cut short by rotation or a crash
            if isinstance(span, dict) and {"trace_id", "span_id", "start_ns"} <= span.keys():
                spans.append(span)
    return spans


def build_traces(spans: Iterable[dict[str, Any]]) -> list[Trace]:
    """Traces, most recent first; a span whose parent is unknown is shown as a root."""
    by_trace: dict[str, dict[str, dict[str, Any]]] = {}
    for span in spans:
        by_trace.setdefault(span["trace_id"], {})[span["span_id"]] = span
    traces = []
    for trace_id, members in by_trace.items():
        nodes = {span_id: SpanNode(span) for span_id, span in members.items()}
        roots: list[SpanNode] = []
        for node in nodes.values():
            parent = nodes.get(node.span.get("parent_id") or "")
            (parent.children if parent is not None else roots).append(node)
        for node in nodes.values():
            node.children.sort(key=lambda n: n.span["start_ns"])
        roots.sort(key=lambda n: n.span["start_ns"])
        traces.append(Trace(trace_id, list(members.values()), roots))
    traces.sort(key=lambda t: t.end_ns, reverse=True)
    return traces
