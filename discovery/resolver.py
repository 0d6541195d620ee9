"""The contract between discovery sources and the data path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from discovery.endpoint import EndpointSet


class Resolver(Protocol):
    def watch(self, service: str) -> AsyncIterator[EndpointSet]:
        """Yield the service's endpoints now and again whenever they change.

        The first yield is the readiness signal. Sources keep their last good answer when
        their backend fails; an iterator ends only when the resolver is closed.
        """
        ...

    def knows(self, service: str) -> bool | None:
        """Whether `service` is a mesh service (used by proxy mode to pick passthrough);
        None while the source cannot tell yet (it has not answered)."""
        ...
