"""The demo mesh's one description: which services exist and whom each calls.

The local demo (and, later, the compose file) are made from this, so they cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoService:
    name: str
    calls: tuple[str, ...] = ()


#: The entry first. `frontend` calls the shop's services; they call further in.
SERVICES: tuple[DemoService, ...] = (
    DemoService("frontend", ("products", "orders")),
    DemoService("products"),
    DemoService("orders", ("payments",)),
    DemoService("payments"),
)

ENTRY = SERVICES[0].name

#: The mesh's one entry point for outside clients: the ingress gateway, and its routes
#: (prefix -> service). The catalog's product pages are cacheable.
GATEWAY = "gateway"
GATEWAY_ROUTES: tuple[tuple[str, str], ...] = (("/products", "products"), ("/", ENTRY))
