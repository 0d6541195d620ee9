"""Small helpers on header lists (lower-case names, raw values)."""

from __future__ import annotations

from mesh.http1.message import Headers


def get_header(headers: Headers, name: bytes) -> bytes | None:
    """All values of `name` joined with ", " (RFC 9110 §5.3), or None."""
    values = [v for n, v in headers if n == name]
    if not values:
        return None
    return values[0] if len(values) == 1 else b", ".join(values)


def tokens(value: bytes | None) -> list[bytes]:
    """A comma-separated list, each item stripped and lower-cased (directive names kept
    with their `=value`)."""
    if not value:
        return []
    return [item.strip().lower() for item in value.split(b",") if item.strip()]


def directives(value: bytes | None) -> dict[bytes, bytes]:
    """Cache-Control style `name[=value]` items: {name: value or b""}."""
    found: dict[bytes, bytes] = {}
    for item in tokens(value):
        name, _, arg = item.partition(b"=")
        found[name.strip()] = arg.strip().strip(b'"')
    return found
