"""Delays or aborts a share of requests on purpose (`mesh.resilience.fault` decides which).

For demos and resilience tests. Insert it only where a `FaultPolicy` is active; with no
fault configured and headers not honoured, a request costs one call returning None. An
abort answers `x-mesh-error: fault-injected` with the configured status; a delay honours
the request's deadline (`upstream-timeout` if the deadline comes first).

Fault headers are removed from the request whenever this layer reads them, so a fault
asked of this hop is not applied again by the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from mesh.errors import FaultInjected, UpstreamTimeout
from mesh.http1.message import Request, Response
from mesh.resilience.clock import Clock, Random
from mesh.resilience.fault import FAULT_HEADERS, FaultInjector
from mesh.resilience.policy import FaultPolicy
from mesh.stack import Handler

Sleep = Callable[[float], Awaitable[None]]


class FaultInjection(Handler):
    def __init__(
        self,
        inner: Handler,
        policy: FaultPolicy,
        *,
        rng: Random | None = None,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        self.inner = inner
        self.policy = policy
        self.injector = FaultInjector(policy, rng)
        self._honour_headers = policy.honour_headers
        self._clock = clock
        self._sleep: Sleep = sleep or asyncio.sleep

    async def handle(self, request: Request) -> Response:
        headers = request.headers if self._honour_headers else None
        fault = self.injector.decide(headers)
        if headers is not None:
            for name, _ in headers:
                if name in FAULT_HEADERS:
                    request.headers = [(n, v) for n, v in headers if n not in FAULT_HEADERS]
                    break
        if fault is not None:
            if fault.delay > 0:
                delay = fault.delay
                deadline = request.deadline
                if deadline is not None:
                    clock = self._clock or asyncio.get_running_loop().time
                    left = deadline - clock()
                    if left < delay:
                        await self._sleep(max(0.0, left))
                        raise UpstreamTimeout("deadline passed during an injected delay")
                await self._sleep(delay)
            if fault.abort_status:
                raise FaultInjected(
                    f"aborted on purpose with {fault.abort_status}", fault.abort_status
                )
        return await self.inner.handle(request)

    def statistics(self) -> dict[str, Any]:
        return self.injector.statistics()

    def __repr__(self) -> str:
        return f"<FaultInjection {self.injector!r}>"
