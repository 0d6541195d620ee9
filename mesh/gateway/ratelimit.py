"""Rate limits per route: a token bucket per key (client address, JWT subject, API key).

`TokenBuckets` is the pure decision (an injected clock, no I/O). Memory is bounded: at most
`max_keys` buckets, the least recently seen dropped first. A dropped bucket comes back full,
which is what an idle key's bucket would have refilled to anyway; under a flood of fresh
keys, old ones are forgotten early (lenient, never wrongly strict).

Responses carry the limit as draft-ietf-httpapi-ratelimit-headers has it:

    RateLimit-Policy: "orders";q=10;w=60
    RateLimit: "orders";r=3;t=12

and a refusal is `429 rate-limited` with `Retry-After` (seconds until a token is back).
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from typing import NamedTuple

from mesh.errors import RateLimited
from mesh.gateway.config import RateLimitConfig
from mesh.http1.message import Request, Response
from mesh.stack import Handler


class Decision(NamedTuple):
    allowed: bool
    #: Whole tokens left after this request.
    remaining: int
    #: Seconds until a token is available again (0 when some are left).
    retry_after: float
    #: Seconds until the bucket is full again.
    reset: float


class TokenBuckets:
    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        #: key -> [tokens, time of last update]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self.refused = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> Decision:
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            bucket = buckets[key] = [self.burst, now]
        else:
            buckets.move_to_end(key)
            tokens, then = bucket
            bucket[0] = min(self.burst, tokens + (now - then) * self.rate)
            bucket[1] = now
        tokens = bucket[0]
        if tokens >= 1.0:
            tokens = bucket[0] = tokens - 1.0
            return Decision(True, int(tokens), 0.0, (self.burst - tokens) / self.rate)
        self.refused += 1
        wait = (1.0 - tokens) / self.rate
        return Decision(False, 0, wait, (self.burst - tokens) / self.rate)


class RateLimit(Handler):
    def __init__(self, inner: Handler, policy: RateLimitConfig, name: str) -> None:
        self.inner = inner
        self.key = policy.key
        burst = policy.burst or policy.requests
        self.buckets = TokenBuckets(policy.requests / policy.per, burst, policy.max_keys)
        label = name.replace('"', "").encode()
        self._label = label
        self._policy = (
            b"ratelimit-policy",
            b'"%s";q=%d;w=%d' % (label, policy.requests, max(1, math.ceil(policy.per))),
        )
        self._loop = asyncio.get_event_loop()

    def statistics(self) -> dict[str, int | str]:
        return {"key": self.key, "keys": len(self.buckets), "refused": self.buckets.refused}

    async def handle(self, request: Request) -> Response:
        # JWT and API key routes record the verified principal in `peer_identity`.
        key = request.client_addr if self.key == "ip" else request.peer_identity
        decision = self.buckets.take(key, self._loop.time())
        state = (
            b"ratelimit",
            b'"%s";r=%d;t=%d' % (self._label, decision.remaining, math.ceil(decision.reset)),
        )
        if not decision.allowed:
            wait = max(1, math.ceil(decision.retry_after))
            raise RateLimited(
                f"rate limit of this route reached; retry in {wait}s", wait, (self._policy, state)
            )
        response = await self.inner.handle(request)
        response.headers += (self._policy, state)
        return response
