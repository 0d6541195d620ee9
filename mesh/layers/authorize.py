"""Inbound: refuse callers the policy does not allow, before anything reaches the app.

Decisions are cached per caller identity: a keep-alive connection from one caller sends
many requests. The cache is dropped whenever the authorizer's generation changes (Consul
intentions changed), so a new policy applies to the next request.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

from mesh.errors import Forbidden
from mesh.http1.message import Request, Response
from mesh.identity.authorize import Authorizer
from mesh.stack import Handler

log = logging.getLogger("mesh.authorize")


class Authorize(Handler):
    def __init__(self, inner: Handler, authorizer: Authorizer, own_identity: str) -> None:
        self.inner = inner
        self.authorizer = authorizer
        self.own_identity = own_identity
        self._decided: dict[str, tuple[bool, str]] = {}
        self._generation = authorizer.generation
        self.denied = 0

    def handle(self, request: Request) -> Coroutine[Any, Any, Response]:
        """A refusal raises here; otherwise the inner coroutine is returned (no frame)."""
        caller = request.peer_identity
        generation = self.authorizer.generation
        if generation != self._generation:
            self._decided.clear()
            self._generation = generation
        decision = self._decided.get(caller)
        if decision is None:
            decision = self.authorizer.decide(caller)
            if len(self._decided) < 4096:
                self._decided[caller] = decision
        if not decision[0]:
            self.denied += 1
            log.warning(
                "denied %s -> %s: %s", caller or "<no identity>", self.own_identity, decision[1]
            )
            raise Forbidden(f"{caller or 'caller'} may not call {self.own_identity}: {decision[1]}")
        return self.inner.handle(request)
