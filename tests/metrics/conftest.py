"""Fixtures of the metrics tests: the Prometheus binary (installed once per session)."""

from tests.metrics.prometheus import prometheus_binary

__all__ = ["prometheus_binary"]
