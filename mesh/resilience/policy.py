"""Resilience policies: plain, frozen, comparable data, validated when built.

One upstream gets one of each. Defaults follow the anchors (Envoy, Linkerd) unless a comment
says why not; `mesh.resilience` explains how the breaker and outlier ejection fit together.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, not {value!r}")


def _at_least_zero(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, not {value!r}")


def _share(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be between 0 and 1, not {value!r}")


def _percent(name: str, value: float) -> None:
    if not 0 <= value <= 100:
        raise ValueError(f"{name} must be between 0 and 100, not {value!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed attempt is tried again (see `mesh.resilience.retry` for the rules)."""

    #: Retries after the first attempt (Envoy and Consul: 1 once a policy exists).
    max_retries: int = 1
    #: Response statuses retried for idempotent methods. The gateway errors only: a 500 is
    #: usually the app's own deterministic failure, which a second try repeats.
    retry_statuses: frozenset[int] = field(default=frozenset({502, 503, 504}))
    #: Each attempt's own limit until the response head (None: only the overall deadline).
    #: Off by default like Envoy's: a value below the app's real latency turns slow
    #: successes into retries; set it per upstream from a measured p99.
    per_try_timeout: float | None = None
    #: Full-jitter exponential backoff: attempt n waits U(0, min(max, base * 2**(n-1))).
    backoff_base: float = 0.025
    backoff_max: float = 0.25
    #: An upstream's `Retry-After` is honoured as the least wait; one longer than this (or
    #: than the deadline left) means no retry: the answer goes back to the caller, who can wait.
    max_retry_after: float = 1.0
    #: Request bodies up to this size are buffered so they can be sent again (Linkerd: 64 KiB);
    #: larger or still-streaming bodies go once and are never retried.
    max_replay_body: int = 64 * 1024
    #: When the caller is a mesh hop that retries itself (its request carries
    #: `x-mesh-attempt`), retry here only failures that never reached the app: the caller
    #: retries the rest, so a chain of hops multiplies load by one budget, not one per hop.
    defer_to_caller: bool = True

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {self.max_retries}")
        if self.per_try_timeout is not None:
            _positive("per_try_timeout", self.per_try_timeout)
        _at_least_zero("backoff_base", self.backoff_base)
        _at_least_zero("backoff_max", self.backoff_max)
        _at_least_zero("max_retry_after", self.max_retry_after)
        if self.max_replay_body < 0:
            raise ValueError(f"max_replay_body must be >= 0, not {self.max_replay_body}")
        for status in self.retry_statuses:
            if not 500 <= status <= 599:
                raise ValueError(f"retry_statuses: {status} is not a 5xx status")


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """Retries allowed per upstream: `ratio` of recent requests plus a small floor (Linkerd)."""

    #: Retries may add this share of the requests seen in the last `ttl` seconds.
    ratio: float = 0.2
    #: Floor so that a quiet upstream can still retry: this many per second over `ttl`.
    min_per_s: float = 10.0
    #: Length of the sliding window, seconds.
    ttl: float = 10.0

    def __post_init__(self) -> None:
        _at_least_zero("ratio", self.ratio)
        _at_least_zero("min_per_s", self.min_per_s)
        _positive("ttl", self.ttl)


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When one endpoint's breaker trips, and how it comes back.

    A breaker trips on `consecutive_failures` in a row, or (when `failure_rate` is set) when
    that share of at least `rate_min_requests` outcomes in the last `rate_window` seconds
    failed. Open, it waits a backoff, then lets exactly one real request probe: success
    closes it, failure opens it again for longer. This backoff *is* the ejection time of
    outlier ejection (`mesh.resilience`): 1 s doubling to 60 s, as Linkerd's failure accrual,
    rather than Envoy's 30 s x times ejected up to 300 s, because the single-request probe
    makes an early look cheap, and a recovered endpoint should not sit idle for half a minute.
    """

    #: Failures in a row that trip the breaker. 5 as Envoy's consecutive_5xx (Linkerd: 7):
    #: with a probe after 1 s, tripping early costs one request a second per bad endpoint.
    consecutive_failures: int = 5
    #: Share of failed outcomes that trips the breaker (None: consecutive failures only).
    failure_rate: float | None = None
    rate_window: float = 10.0
    #: Fewer outcomes than this in the window never trip on rate (one failure is not 100 %).
    rate_min_requests: int = 20
    #: Open time before the first probe, doubling per trip without recovery, up to the max.
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    #: Each open time is drawn from [max(min, (1 - jitter) * b), b] so that the sidecars of
    #: a mesh do not all probe a sick endpoint at the same instant.
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError(f"consecutive_failures must be >= 1, not {self.consecutive_failures}")
        if self.failure_rate is not None and not 0 < self.failure_rate <= 1:
            raise ValueError(f"failure_rate must be in (0, 1], not {self.failure_rate!r}")
        _positive("rate_window", self.rate_window)
        if self.rate_min_requests < 1:
            raise ValueError(f"rate_min_requests must be >= 1, not {self.rate_min_requests}")
        _positive("backoff_min", self.backoff_min)
        if self.backoff_max < self.backoff_min:
            raise ValueError("backoff_max must be >= backoff_min")
        _share("jitter", self.jitter)


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """Cluster-wide rules on top of the endpoint breakers (Envoy's outlier detection).

    Envoy's numbers map as: consecutive_5xx -> `BreakerPolicy.consecutive_failures`,
    base/max ejection time -> `BreakerPolicy.backoff_min/max` (an endpoint's ejection time
    grows with the times it was ejected without lasting recovery). What stays here is what
    only the cluster can decide.
    """

    #: At most this share of a cluster's endpoints is ejected at once; always at least one
    #: (Envoy: 10 %, "will eject at least one host regardless of the value").
    max_ejection_share: float = 0.1
    #: False: no endpoint breakers and no ejection at all; every endpoint stays in rotation.
    enabled: bool = True

    def __post_init__(self) -> None:
        _share("max_ejection_share", self.max_ejection_share)


@dataclass(frozen=True, slots=True)
class BulkheadPolicy:
    """A concurrency limit with a bounded, time-limited wait queue."""

    #: Exchanges in progress at once (Envoy max_requests: 1024).
    max_concurrent: int = 1024
    #: Requests waiting for a slot (Envoy max_pending_requests: 1024); more fail at once.
    max_queued: int = 1024
    #: A request that cannot start within this long is told to come back rather than
    #: silently spending its caller's deadline in a queue.
    queue_timeout: float = 1.0
    #: Seconds for the `Retry-After` of a `bulkhead-full` answer.
    retry_after: int = 1

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, not {self.max_concurrent}")
        if self.max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, not {self.max_queued}")
        _positive("queue_timeout", self.queue_timeout)
        if self.retry_after < 0:
            raise ValueError(f"retry_after must be >= 0, not {self.retry_after}")


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """Envoy-style per-upstream resource counters ("circuit breaker thresholds").

    Requests and pending map onto the upstream's bulkhead (`bulkhead()`), retries onto the
    Retry layer's gauge, connections onto the connection pools.
    """

    max_connections: int = 1024
    max_pending: int = 1024
    max_requests: int = 1024
    #: Retries outstanding at once across the upstream: a hard ceiling beside the budget.
    #: Not Envoy's 3: Envoy ignores its max_retries once a retry budget is configured, and
    #: here a budget always is; with 3, one endpoint dying under 16 concurrent callers
    #: turned two thirds of its retryable failures into errors (tests/chaos measured it).
    max_retries: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_pending", "max_requests", "max_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_requests < 1:
            raise ValueError("max_requests must be >= 1")

    def bulkhead(self, queue_timeout: float = 1.0, retry_after: int = 1) -> BulkheadPolicy:
        return BulkheadPolicy(self.max_requests, self.max_pending, queue_timeout, retry_after)


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    """Delay or abort a share of requests on purpose, for demos and resilience tests."""

    #: Share of requests delayed, in percent, and by how long (seconds).
    delay_percent: float = 0.0
    delay: float = 0.0
    #: Share of requests aborted, in percent, and the status they get.
    abort_percent: float = 0.0
    abort_status: int = 503
    #: Honour `x-mesh-fault-*` request headers. Only for listeners whose callers are
    #: trusted: anyone who can send the header can then fail requests.
    honour_headers: bool = False

    def __post_init__(self) -> None:
        _percent("delay_percent", self.delay_percent)
        _at_least_zero("delay", self.delay)
        _percent("abort_percent", self.abort_percent)
        if not 400 <= self.abort_status <= 599:
            raise ValueError(f"abort_status must be a 4xx or 5xx status, not {self.abort_status}")

    @property
    def active(self) -> bool:
        """Whether the layer has anything to do at all."""
        return (
            self.honour_headers
            or (self.delay_percent > 0 and self.delay > 0)
            or self.abort_percent > 0
        )
