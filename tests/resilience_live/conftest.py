"""Fixtures and helpers for the resilience layers as a client of a real sidecar sees them.

Each module starts its own outbound sidecar (`start_outbound`) with one local listener per
upstream service of a static catalog, and short timeouts and backoffs in its config so that
faults show within fractions of a second. Evidence comes from the recording upstreams (what
reached the app), from the answers (status, `x-mesh-error`, `Retry-After`, elapsed time)
and from the sidecar's `GET /clusters` (`resilience` per upstream).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.processes import MeshProcess, Sidecars, free_port, wait_until, write_yaml
from tests.support.rawclient import HttpConnection, IncompleteResponse
from tests.support.upstream import RecordedRequest, Reply


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecars]:
    group = Sidecars(tmp_path_factory.mktemp("sidecars"))
    yield group
    group.stop_all()


@dataclass
class Outbound:
    """A sidecar with one local listener per upstream service."""

    sidecar: MeshProcess
    ports: dict[str, int]

    def resilience(self, service: str) -> dict[str, Any]:
        data: dict[str, Any] = self.sidecar.admin("/clusters")[service]["resilience"]
        return data

    def breaker(self, service: str, address: str) -> dict[str, Any]:
        endpoint: dict[str, Any] = self.resilience(service)["outlier"]["endpoints"][address]
        return endpoint

    def alive(self) -> None:
        code = self.sidecar.proc.poll()
        assert code is None, f"{self.sidecar.name} exited ({code}):\n{self.sidecar.logs()}"


def start_outbound(
    sidecars: Sidecars, name: str, services: dict[str, list[str]], config: dict[str, Any]
) -> Outbound:
    """A sidecar calling `services` (name -> endpoint addresses) with `config` on top."""
    ports = {service: free_port() for service in services}
    catalog = write_yaml(sidecars.log_dir / f"{name}-catalog.yaml", {"services": services})
    path = write_yaml(
        sidecars.log_dir / f"{name}.yaml",
        {
            "service": "client",
            "catalog": str(catalog),
            "upstreams": [{"name": s, "local_port": p} for s, p in ports.items()],
            **config,
        },
    )
    return Outbound(sidecars.start("--config", str(path), name=name), ports)


@dataclass
class Answer:
    """What the client got: a complete response, or the way the connection ended."""

    status: int | None
    headers: list[tuple[str, str]]
    body: bytes
    elapsed: float
    #: Why the response was incomplete ("" when it was complete).
    cut: str = ""
    body_received: int = 0
    closed_by_peer: bool = False

    def get(self, name: str) -> str | None:
        name = name.lower()
        return next((v for n, v in self.headers if n == name), None)

    @property
    def reason(self) -> str | None:
        return self.get("x-mesh-error")


def call(
    port: int,
    target: str = "/",
    method: str = "GET",
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 10.0,
) -> Answer:
    """One request on a fresh connection, timed from the request's first byte."""
    with HttpConnection(port, timeout=timeout) as conn:
        start = time.monotonic()
        conn.request(method, target, headers, body)
        try:
            response = conn.read_response(method)
        except IncompleteResponse as cut:
            elapsed = time.monotonic() - start
            return Answer(
                cut.status,
                [],
                b"",
                elapsed,
                cut.why,
                cut.body_received,
                conn.closed_by_peer(2),
            )
        elapsed = time.monotonic() - start
        return Answer(response.status, response.headers, response.body, elapsed)


@contextlib.contextmanager
def launched(calls: Sequence[Callable[[], Answer]], timeout: float = 20.0) -> Iterator[Launch]:
    """Start `calls` at the same moment, one thread each, and let the test watch them."""
    start = threading.Barrier(len(calls))

    def run(fn: Callable[[], Answer]) -> Answer:
        start.wait(timeout)
        return fn()

    with ThreadPoolExecutor(len(calls)) as pool:
        yield Launch([pool.submit(run, fn) for fn in calls], timeout)


@dataclass
class Launch:
    futures: list[Future[Answer]]
    timeout: float

    def done(self) -> list[Answer]:
        """The answers that have arrived so far."""
        return [f.result() for f in self.futures if f.done()]

    def wait_done(self, count: int, timeout: float = 5.0) -> list[Answer]:
        wait_until(lambda: len(self.done()) >= count, timeout, f"{count} answers")
        return self.done()

    def answers(self) -> list[Answer]:
        """All answers, in the order the calls were given."""
        return [f.result(self.timeout) for f in self.futures]


def together(calls: Sequence[Callable[[], Answer]], timeout: float = 20.0) -> list[Answer]:
    """Run `calls` at the same moment, one thread each; answers in the order given."""
    with launched(calls, timeout) as launch:
        return launch.answers()


def assert_refusal(answer: Answer, status: int, reason: str) -> None:
    """A proxy-made answer: the status, the reason word, and a one-line body."""
    assert answer.status == status, (answer.status, answer.reason, answer.body)
    assert answer.reason == reason, answer.body
    assert answer.body.endswith(b"\n") and answer.body.count(b"\n") == 1


class Gate:
    """An upstream handler that holds every request until released, counting concurrency.

    `inside` is how many requests the app is working on right now; `peak` the most ever.
    Held requests wait at most `hold` seconds (so a failed test cannot hang the upstream).
    """

    def __init__(self, reply: Callable[[RecordedRequest], Reply], hold: float = 10.0) -> None:
        self.reply = reply
        self.hold = hold
        self.opened = threading.Event()
        self._lock = threading.Lock()
        self.inside = 0
        self.peak = 0
        self.seen = 0

    def __call__(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.inside += 1
            self.seen += 1
            self.peak = max(self.peak, self.inside)
        try:
            self.opened.wait(self.hold)
            return self.reply(request)
        finally:
            with self._lock:
                self.inside -= 1

    def release(self) -> None:
        self.opened.set()

    def wait_inside(self, count: int, timeout: float = 5.0) -> None:
        wait_until(lambda: self.inside >= count, timeout, f"{count} requests inside the app")
