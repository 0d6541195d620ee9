"""Admin endpoints beyond state: metrics, the log level, drain and config reload.

    GET  /metrics            Prometheus text format (also on `metrics.listen`, if set)
    GET  /logging            the current log level
    POST /logging?level=L    switch the log level now (debug, info, warning, error)
    POST /drain              graceful stop: leave discovery, finish in-flight requests, exit
    POST /reload             re-read the config file (as SIGHUP does)

POSTs are control actions: they are refused (403) unless the caller is on loopback, even
when the admin listener was bound wider by mistake.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from mesh.http1.message import Request, Response
from mesh.stack import Handler
from sidecar.metrics import CONTENT_TYPE
from sidecar.reload import ReloadRefused, reload, set_log_level

if TYPE_CHECKING:
    from sidecar.runtime import Sidecar

log = logging.getLogger("sidecar.admin")

LEVELS = ("debug", "info", "warning", "error")

JsonResponder = Callable[[int, object], Response]


def metrics_response(sidecar: Sidecar) -> Response:
    try:
        text = sidecar.metrics.render()
    except Exception:  # a bug in one family must not cost the admin listener its answer
        log.exception("collecting metrics failed")
        return Response.local(500, b"collecting metrics failed; see the sidecar's log\n")
    return Response.local(200, text, [(b"content-type", CONTENT_TYPE)])


def _from_loopback(request: Request) -> bool:
    try:
        return ipaddress.ip_address(request.client_addr).is_loopback
    except ValueError:
        return False


def current_level() -> str:
    return logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()


class Control:
    """The POST endpoints; `respond` builds the admin API's JSON responses."""

    def __init__(self, sidecar: Sidecar, respond: JsonResponder) -> None:
        self.sidecar = sidecar
        self.respond = respond
        self.routes: dict[bytes, Callable[[Request], Response]] = {
            b"/logging": self._logging,
            b"/drain": self._drain,
            b"/reload": self._reload,
        }

    def handle(self, request: Request) -> Response:
        if not _from_loopback(request):
            return self.respond(403, {"error": "control endpoints answer loopback callers only"})
        return self.routes[request.path](request)

    def _logging(self, request: Request) -> Response:
        query = parse_qs(request.target.partition(b"?")[2].decode("latin-1"))
        level = (query.get("level") or [""])[0].lower()
        if level not in LEVELS:
            return self.respond(400, {"error": f"level must be one of {', '.join(LEVELS)}"})
        before = current_level()
        set_log_level(level)
        log.warning("log level %s -> %s (admin API)", before, level)
        return self.respond(200, {"level": level, "previous": before})

    def _drain(self, request: Request) -> Response:
        log.warning("drain requested through the admin API")
        self.sidecar.graceful_stop()
        return self.respond(202, {"draining": True})

    def _reload(self, request: Request) -> Response:
        try:
            changed = reload(self.sidecar)
        except ReloadRefused as exc:
            return self.respond(400, {"reloaded": False, "error": str(exc)})
        return self.respond(200, {"reloaded": True, "changed": changed})


class MetricsOnly(Handler):
    """The handler of the optional metrics listener: GET /metrics and nothing else."""

    def __init__(self, sidecar: Sidecar, respond: JsonResponder) -> None:
        self.sidecar = sidecar
        self.respond = respond

    async def handle(self, request: Request) -> Response:
        if request.path != b"/metrics":
            return self.respond(404, {"error": "not found", "paths": ["/metrics"]})
        if request.method not in (b"GET", b"HEAD"):
            return self.respond(405, {"error": "method not allowed"})
        return metrics_response(self.sidecar)
