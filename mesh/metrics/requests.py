"""Golden signals of one stack: requests by status class, latency, in flight, local answers.

`ObserveRequests` wraps a stack once, when it is composed; per request it adds to ints on
one `RequestStats` object and to one fixed-bucket histogram. Latency runs from the moment
the request head was parsed to the moment the response head is ready (the body streams
afterwards and is the client's pace as much as ours).

It works inside `Rescue` (failures arrive as MeshErrors) and outside it (as responses with
an `error_reason`); either way each request counts once.
"""

from __future__ import annotations

import asyncio

from mesh.errors import MeshError
from mesh.http1.message import Request, Response
from mesh.metrics.histogram import Histogram
from mesh.respond import INTERNAL_REASON
from mesh.stack import Handler

#: Index = status // 100; 0 collects anything outside 1xx-5xx.
STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")


class RequestStats:
    """What one observed stack has seen, in plain numbers the collector reads."""

    __slots__ = ("by_class", "direction", "duration", "in_flight", "local", "upstream")

    def __init__(self, direction: str, upstream: str) -> None:
        self.direction = direction
        self.upstream = upstream
        self.by_class = [0] * len(STATUS_CLASSES)
        self.in_flight = 0
        self.duration = Histogram()
        #: Answers the proxy made itself, by `x-mesh-error` reason.
        self.local: dict[str, int] = {}

    def record(self, status: int, reason: str, seconds: float) -> None:
        cls = status // 100
        self.by_class[cls if 0 < cls < 6 else 0] += 1
        self.duration.observe(seconds)
        if reason:
            self.local[reason] = self.local.get(reason, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.by_class)


class ObserveRequests:
    def __init__(self, inner: Handler, stats: RequestStats) -> None:
        self.inner = inner
        self.stats = stats
        self._loop = asyncio.get_event_loop()

    async def handle(self, request: Request) -> Response:
        stats = self.stats
        stats.in_flight += 1
        try:
            response = await self.inner.handle(request)
        except MeshError as exc:
            stats.record(exc.status, exc.reason, self._loop.time() - request.received_at)
            raise
        except Exception:
            stats.record(500, INTERNAL_REASON, self._loop.time() - request.received_at)
            raise
        finally:
            stats.in_flight -= 1
        stats.record(
            response.status, response.error_reason, self._loop.time() - request.received_at
        )
        return response


class RequestMetrics:
    """Every observed stack of one sidecar, keyed by (direction, upstream)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.stats: dict[tuple[str, str], RequestStats] = {}

    def for_stack(self, direction: str, upstream: str) -> RequestStats:
        key = (direction, upstream)
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = RequestStats(direction, upstream)
        return stats

    def observe(self, handler: Handler, direction: str, upstream: str) -> Handler:
        return ObserveRequests(handler, self.for_stack(direction, upstream))
