"""The one contract every layer shares, and how stacks are composed.

A handler turns a request into a response head (the body streams afterwards). A layer is a
handler that wraps an inner one; stacks are composed once, when config arrives, with the
outermost layer first:

    compose(Connect(pools), [Rescue, AccessLog, Deadline, Balance])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from mesh.http1.message import Request, Response


class Handler(Protocol):
    async def handle(self, request: Request) -> Response: ...


LayerFactory = Callable[[Handler], Handler]


def compose(terminal: Handler, layers: Sequence[LayerFactory]) -> Handler:
    handler = terminal
    for make in reversed(layers):
        handler = make(handler)
    return handler


def describe(handler: Handler) -> list[str]:
    """Names of the layers from the outside in, for /config and debugging."""
    names = []
    current: object | None = handler
    while current is not None:
        names.append(type(current).__name__)
        current = getattr(current, "inner", None)
    return names
