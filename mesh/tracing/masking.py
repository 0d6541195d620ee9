"""Access-log fields that may hold secrets: the query string and chosen request headers,
with the values of configured names replaced by `***` (names compare case-insensitively)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mesh.http1.message import Request

MASK = "***"


def mask_query(query: str, masked: frozenset[str]) -> str:
    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        if sep and name.lower() in masked:
            part = f"{name}={MASK}"
        parts.append(part)
    return "&".join(parts)


class LogFields:
    def __init__(
        self,
        query: bool,
        headers: Iterable[str],
        mask_headers: Iterable[str],
        mask_params: Iterable[str],
    ) -> None:
        self.query = query
        self.headers = tuple(h.lower().encode("latin-1") for h in headers)
        self.mask_headers = frozenset(h.lower().encode("latin-1") for h in mask_headers)
        self.mask_params = frozenset(p.lower() for p in mask_params)

    def add(self, record: dict[str, Any], request: Request) -> None:
        if self.query:
            _, sep, query = request.target.partition(b"?")
            record["query"] = mask_query(query.decode("latin-1"), self.mask_params) if sep else None
        if self.headers:
            logged: dict[str, str] = {}
            for name, value in request.headers:
                if name in self.headers:
                    text = MASK if name in self.mask_headers else value.decode("latin-1")
                    key = name.decode("latin-1")
                    logged[key] = f"{logged[key]}, {text}" if key in logged else text
            record["headers"] = logged
