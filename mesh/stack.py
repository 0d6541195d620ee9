"""The one contract every layer shares, and how stacks are composed.

A handler turns a request into a response head (the body streams afterwards). A layer is a
handler that wraps an inner one; stacks are composed once, when config arrives, with the
outermost layer first:

    compose(Connect(pools), [Rescue, AccessLog, Deadline, Balance])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mypy_extensions import mypyc_attr

from mesh.http1.message import Request, Response


@mypyc_attr(allow_interpreted_subclasses=True)
class Handler:
    """What every layer and terminal is. A base class rather than a Protocol: the compiled
    layers then call `self.inner.handle` through a vtable slot instead of a by-name method
    lookup, once per layer per request. A layer with nothing to do after its inner handler
    may be a plain `def handle` returning the inner coroutine: no coroutine frame of its own.
    """

    async def handle(self, request: Request) -> Response:
        raise NotImplementedError


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
