"""Golden signals of one stack: requests by status class, latency, in flight, local answers.

`ObserveRequests` wraps a stack once, when it is composed; per request it adds to ints on
one `RequestStats` object and to one fixed-bucket histogram. Latency runs from the moment
the request head was parsed to the moment the response head is ready (the body streams
afterwards and is the client's pace as much as ours).

gRPC calls (HTTP/2 only) are also counted by their `grpc-status` code name, once known
(`mesh.grpc.outcome`): a gRPC failure is an HTTP 200.

It works inside `Rescue` (failures arrive as MeshErrors) and outside it (as responses with
an `error_reason`); either way each request counts once.
"""

from __future__ import annotations

import asyncio
from typing import Final

from mesh.errors import MeshError
from mesh.grpc.outcome import count_failure, count_status
from mesh.http1.message import Request, Response
from mesh.metrics.histogram import Histogram, bucket_index
from mesh.respond import INTERNAL_REASON
from mesh.stack import Handler

#: Index = status // 100 (statuses have three digits); "other" collects 0xx and 6xx-9xx.
STATUS_CLASSES: Final = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
_SLOTS: Final = 10


def reason_words() -> list[str]:
    """Every `x-mesh-error` word the error tree defines (subclasses loaded so far)."""
    words = {INTERNAL_REASON}
    todo = MeshError.__subclasses__()
    while todo:
        cls = todo.pop()
        words.add(cls.reason)
        todo.extend(cls.__subclasses__())
    return sorted(words)


class RequestStats:
    """What one observed stack has seen, in plain numbers the collector reads."""

    __slots__ = ("by_class", "direction", "duration", "grpc", "in_flight", "local", "upstream")

    def __init__(self, direction: str, upstream: str) -> None:
        self.direction = direction
        self.upstream = upstream
        #: Requests by status // 100; `classes()` folds it into STATUS_CLASSES.
        self.by_class = [0] * _SLOTS
        self.in_flight = 0
        self.duration = Histogram()
        #: Answers the proxy made itself, by `x-mesh-error` reason. Every known word starts
        #: at 0, so that Prometheus' rate() sees the first one happen.
        self.local: dict[str, int] = dict.fromkeys(reason_words(), 0)
        #: gRPC calls by the name of their status code (`OK`, `UNAVAILABLE`...).
        self.grpc: dict[str, int] = {}

    def record(self, status: int, reason: str, seconds: float) -> None:
        """The slow path (failures); `ObserveRequests` inlines the same for responses."""
        self.by_class[status // 100 % _SLOTS] += 1
        self.duration.observe(seconds)
        if reason:
            self.local[reason] = self.local.get(reason, 0) + 1

    def classes(self) -> list[tuple[str, int]]:
        counts = self.by_class
        other = counts[0] + sum(counts[6:])
        return [("other", other), *zip(STATUS_CLASSES[1:], counts[1:6], strict=True)]


class ObserveRequests(Handler):
    def __init__(self, inner: Handler, stats: RequestStats) -> None:
        self.inner = inner
        self.stats = stats
        self._time = asyncio.get_event_loop().time

    async def handle(self, request: Request) -> Response:
        stats = self.stats
        stats.in_flight += 1
        try:
            response = await self.inner.handle(request)
        except MeshError as exc:
            stats.record(exc.status, exc.reason, self._time() - request.received_at)
            if request.version == b"2":
                count_failure(stats.grpc, request, exc.reason, exc.status)
            raise
        except Exception:
            stats.record(500, INTERNAL_REASON, self._time() - request.received_at)
            raise
        finally:
            stats.in_flight -= 1
        # RequestStats.record inlined: this runs for every request.
        seconds = self._time() - request.received_at
        stats.by_class[response.status // 100 % _SLOTS] += 1
        histogram = stats.duration
        histogram.counts[bucket_index(histogram.bounds, seconds)] += 1
        histogram.sum += seconds
        if response.error_reason:
            stats.local[response.error_reason] = stats.local.get(response.error_reason, 0) + 1
        if request.version == b"2":
            count_status(stats.grpc, request, response)
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
