"""The admin API: readiness, liveness, effective config and cluster state, all JSON.

Bound to loopback by default: it reveals topology and, later, takes control actions.

    GET /ready      200 once listeners are up and discovery has answered for every upstream
    GET /live       200 while the process runs its event loop
    GET /config     the effective config, secrets redacted
    GET /clusters   every upstream: endpoints, identities, pools, in-flight requests
    GET /listeners  every listener: open, active and refused connections
    GET /certs      this sidecar's certificate: identity, serial, expiry, reloads
    GET /tracing    spans recorded, exported, failed and dropped (queue full)
    GET /gateway    (gateway only) routes, JWT key sets, response cache

Metrics, the log level, drain and reload: see sidecar/admin_control.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mesh.http1.message import Request, Response
from mesh.stack import Handler
from sidecar.admin_control import Control, current_level, metrics_response
from sidecar.tracing_wiring import statistics as tracing_statistics

if TYPE_CHECKING:
    from sidecar.runtime import Sidecar

_JSON = [(b"content-type", b"application/json")]


def json_response(status: int, data: Any) -> Response:
    return Response.local(status, json.dumps(data, indent=2).encode() + b"\n", list(_JSON))


class Admin(Handler):
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self._routes: dict[bytes, Callable[[], Response]] = {
            b"/ready": self._ready,
            b"/live": lambda: json_response(200, {"live": True}),
            b"/config": lambda: json_response(200, sidecar.config.redacted()),
            b"/clusters": lambda: json_response(200, sidecar.clusters_snapshot()),
            b"/listeners": lambda: json_response(200, sidecar.listeners_snapshot()),
            b"/certs": lambda: json_response(
                200, sidecar.tls.statistics() if sidecar.tls is not None else {"mtls": False}
            ),
            b"/tracing": lambda: json_response(200, tracing_statistics(sidecar.config)),
            b"/metrics": lambda: metrics_response(sidecar),
            b"/logging": lambda: json_response(200, {"level": current_level()}),
        }
        gateway_snapshot = getattr(sidecar, "gateway_snapshot", None)
        if gateway_snapshot is not None:
            self._routes[b"/gateway"] = lambda: json_response(200, gateway_snapshot())
        self._control = Control(sidecar, json_response)

    async def handle(self, request: Request) -> Response:
        if request.method == b"POST" and request.path in self._control.routes:
            return self._control.handle(request)
        route = self._routes.get(request.path)
        if route is None and request.path not in self._control.routes:
            paths = {*self._routes, *self._control.routes}
            return json_response(
                404, {"error": "not found", "paths": sorted(p.decode() for p in paths)}
            )
        if route is None or request.method not in (b"GET", b"HEAD"):
            return json_response(405, {"error": "method not allowed"})
        return route()

    def _ready(self) -> Response:
        ready, why = self.sidecar.readiness()
        return json_response(200 if ready else 503, {"ready": ready, "reason": why})
