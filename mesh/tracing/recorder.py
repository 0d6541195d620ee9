"""The bounded hand-off from the request path to the exporting thread.

The request path appends one plain tuple (`SpanRecord`) per finished span: no locks, no
allocation beyond the tuple. A daemon thread wakes every `interval` seconds (or when a batch
is full), takes the whole buffer in one swap and hands it to the exporter, which builds and
encodes the real spans there. When the buffer is full the new span is dropped and counted:
the collector being slow must never cost the traffic memory or latency.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger("mesh.tracing")

SERVER, CLIENT = "server", "client"

#: Longest pause between export attempts while the collector keeps failing.
MAX_BACKOFF = 5.0

#: (kind, trace id, span id, parent id, start ns, end ns, method, target, authority,
#:  status (0: none), error reason ("" when none), peer "host:port" or address,
#:  resend count, scheme, tracestate, mesh service, gRPC status code (-1: not gRPC))
SpanRecord = tuple[
    str,
    bytes,
    bytes,
    bytes,
    int,
    int,
    bytes,
    bytes,
    bytes,
    int,
    str,
    str,
    int,
    bytes,
    bytes,
    str,
    int,
]


class Exporter(Protocol):
    def export(self, records: Sequence[SpanRecord]) -> bool:
        """Send one batch; False when it could not be delivered. Runs on the export thread."""
        ...

    def shutdown(self) -> None: ...


class SpanQueue:
    def __init__(
        self,
        exporter: Exporter,
        max_queue: int = 2048,
        batch: int = 512,
        interval: float = 1.0,
    ) -> None:
        self.exporter = exporter
        self.max_queue = max_queue
        self.batch = batch
        self.interval = interval
        self._buffer: list[SpanRecord] = []
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.recorded = 0
        self.dropped = 0
        self.exported = 0
        self.failed = 0
        self._last_drop_log = 0.0
        #: Exports failed in a row, and when the next may be tried.
        self._failing = 0
        self._retry_at = 0.0
        self._flushing = False

    def put(self, record: SpanRecord) -> None:
        """Request path: O(1), never blocks."""
        buffer = self._buffer
        if len(buffer) >= self.max_queue:
            self.dropped += 1
            return
        buffer.append(record)
        self.recorded += 1
        if len(buffer) == self.batch:
            self._wake.set()
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="span-export", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.interval)
            self._wake.clear()
            # After failed exports, wait longer each time (up to MAX_BACKOFF): a collector
            # that is down costs an attempt now and then; the queue drops what does not fit.
            if time.monotonic() < self._retry_at and not self._flushing:
                continue
            self._drain()

    def _drain(self) -> None:
        self._idle.clear()
        try:
            # One swap: appends racing with it land in the list taken here or the new one.
            taken, self._buffer = self._buffer, []
            for start in range(0, len(taken), self.batch):
                chunk = taken[start : start + self.batch]
                try:
                    ok = self.exporter.export(chunk)
                except Exception:
                    log.exception("span export failed")
                    ok = False
                if ok:
                    self.exported += len(chunk)
                    self._failing = 0
                else:
                    self.failed += len(chunk)
                    self._failing += 1
                    delay = min(self.interval * (1 << min(self._failing, 16)), MAX_BACKOFF)
                    self._retry_at = time.monotonic() + delay
            self._log_drops()
        finally:
            self._idle.set()

    def _log_drops(self) -> None:
        now = time.monotonic()
        if self.dropped and now - self._last_drop_log >= 60:
            self._last_drop_log = now
            log.warning(
                "span queue full: %d span(s) dropped so far (exported %d, failed %d)",
                self.dropped,
                self.exported,
                self.failed,
            )

    def flush(self, timeout: float = 5.0) -> None:
        """Export what is buffered now (from any thread but the export thread)."""
        if self._thread is None:
            if self._buffer:
                self._drain()
            return
        deadline = time.monotonic() + timeout
        self._idle.wait(timeout)
        if self._buffer:
            self._flushing = True
            self._wake.set()
            # Wait for the thread to pick the buffer up and finish with it.
            while self._buffer and time.monotonic() < deadline:
                time.sleep(0.005)
            self._idle.wait(max(0.0, deadline - time.monotonic()))
            self._flushing = False

    def shutdown(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.exporter.shutdown()

    def statistics(self) -> dict[str, int]:
        return {
            "recorded": self.recorded,
            "dropped": self.dropped,
            "exported": self.exported,
            "failed": self.failed,
            "queued": len(self._buffer),
        }
