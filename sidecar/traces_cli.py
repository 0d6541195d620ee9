"""`mesh traces`: recent traces from the local span files, as trees in the terminal."""

from __future__ import annotations

from pathlib import Path

import click

from mesh.tracing.spanfile import SpanNode, Trace, build_traces, read_spans, span_files
from sidecar.tracing_wiring import DEFAULT_SPAN_DIR


def _ms(start_ns: int, end_ns: int) -> str:
    return f"{(end_ns - start_ns) / 1e6:.1f} ms"


def describe_span(span: dict[str, object]) -> str:
    attrs = span.get("attributes")
    attrs = attrs if isinstance(attrs, dict) else {}
    target = attrs.get("url.path") or attrs.get("server.address") or ""
    status = attrs.get("http.response.status_code", "-")
    resend = attrs.get("http.request.resend_count")
    parts = [
        str(span.get("service", "?")),
        str(span.get("kind", "?")).upper(),
        f"{span.get('name', '')} {target}".strip(),
        str(status),
        _ms(int(str(span["start_ns"])), int(str(span["end_ns"]))),
    ]
    if resend:
        parts.append(f"retry #{resend}")
    if span.get("status") == "error":
        parts.append(f"ERROR {span.get('error') or attrs.get('error.type', '')}".strip())
    return "  ".join(parts)


def render(trace: Trace) -> list[str]:
    flag = "  ERROR" if trace.error else ""
    lines = [
        f"trace {trace.trace_id}  {len(trace.spans)} span(s)  "
        f"{_ms(trace.start_ns, trace.end_ns)}{flag}"
    ]

    def walk(node: SpanNode, prefix: str, last: bool) -> None:
        lines.append(f"{prefix}{'└─ ' if last else '├─ '}{describe_span(node.span)}")
        below = prefix + ("   " if last else "│  ")
        for i, child in enumerate(node.children):
            walk(child, below, i == len(node.children) - 1)

    for i, root in enumerate(trace.roots):
        walk(root, "", i == len(trace.roots) - 1)
    return lines


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=DEFAULT_SPAN_DIR,
    show_default=True,
    help="Folder of span files (every sidecar's *.jsonl).",
)
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Read these span files instead (repeatable).",
)
@click.option("--limit", default=10, show_default=True, help="Most recent traces shown.")
@click.option("--trace", "trace_id", default=None, help="Show only this trace id.")
@click.option("--errors", is_flag=True, help="Only traces with an error span.")
def traces(
    directory: Path, files: tuple[Path, ...], limit: int, trace_id: str | None, errors: bool
) -> None:
    """Show recent traces from the local span files as trees."""
    found = build_traces(read_spans(files or span_files(directory)))
    if trace_id is not None:
        found = [t for t in found if t.trace_id == trace_id.lower()]
    if errors:
        found = [t for t in found if t.error]
    if not found:
        click.echo(f"no traces in {', '.join(map(str, files)) or directory}")
        return
    for trace in found[:limit]:
        click.echo("\n".join(render(trace)))
        click.echo()
