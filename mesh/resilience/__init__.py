"""Resilience decisions: pure, synchronous state machines with an injected clock.

Nothing here waits, reads the real clock or does I/O; the layers in `mesh.layers` do the
waiting and feed outcomes back. Every state machine reports `statistics()` and a readable
`repr`.

    policy.py    RetryPolicy, BudgetPolicy, BreakerPolicy, OutlierPolicy, BulkheadPolicy,
                 ResourceLimits, FaultPolicy
    budget.py    RetryBudget: retries <= ratio * recent requests + a floor
    breaker.py   CircuitBreaker: one endpoint's failure accrual, backoff and single probe
    outlier.py   OutlierDetector: a cluster's breakers, with the ejection cap
    bulkhead.py  BulkheadSlots: concurrency limit plus a bounded FIFO of waiters
    limits.py    ResourceGauge / UpstreamResources: Envoy-style per-upstream counters
    retry.py     RetryDecider: tenacity strategies judging each failed attempt
    hop.py       cross-hop coordination headers (x-mesh-attempt, x-mesh-deadline-ms)
    latency.py   AttemptLatency: what an attempt usually takes
    fault.py     FaultInjector: which requests to delay or abort
    window.py    SlidingCounts: event counts over a sliding window

Breaker and outlier ejection are one mechanism seen two ways. Each endpoint has one
breaker, the only failure accounting; "ejected" means "breaker not closed". The breaker is
the endpoint's view (why it opened, when it probes, the one probe); outlier ejection is the
cluster's view, which adds Envoy's rules: at most a share of the endpoints ejected at once,
and an ejection time that grows with the times ejected. So an operator predicts one answer:
an endpoint leaves rotation when its breaker trips *and* the cap allows; it comes back when
its probe succeeds. When no endpoint is usable, the request fails fast: `circuit-open`
(single-endpoint service) or `all-endpoints-ejected`, with `Retry-After` until the next probe.

Envoy's resource limits are the other kind of circuit breaking (`limits.py`,
`bulkhead.py`): per-upstream caps on concurrent requests, waiting requests and retries.

Order on the outbound path, outermost first: overall deadline -> Retry (budget, per-try
deadline, cross-hop headers) -> endpoint choice consulting the breakers -> bulkhead ->
connect. A retry therefore withdraws from the budget before it is balanced, and a refusal by
the breakers or the bulkhead is never retried at the same hop.
"""
