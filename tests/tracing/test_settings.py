"""Tracing settings: `tracing:` keys win, the standard OTEL_* variables fill the rest."""

from __future__ import annotations

from typing import Any

from sidecar.config import SidecarConfig
from sidecar.tracing_wiring import settings


def config(**tracing: Any) -> SidecarConfig:
    return SidecarConfig.model_validate({"service": "orders", "tracing": tracing})


def test_off_without_a_collector_or_a_switch() -> None:
    assert not settings(config(), {}).enabled


def test_environment_configures_otlp() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%3Dcret,x-tenant=blue",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=ignored",
        "OTEL_PROPAGATORS": "b3multi,tracecontext",
    }
    found = settings(config(), env)
    assert found.enabled
    assert found.endpoint == "http://collector:4318/v1/traces"
    assert found.protocol == "http/protobuf"
    assert found.headers == {"api-key": "s=cret", "x-tenant": "blue"}
    assert (found.sampler.name, found.sampler.ratio) == ("parentbased_traceidratio", 0.25)
    assert found.resource == {"deployment.environment": "prod", "service.name": "orders"}
    assert found.propagators == ("b3multi", "tracecontext")
    assert found.span_file is None


def test_config_keys_win_over_the_environment() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318", "OTEL_TRACES_SAMPLER_ARG": "0.5"}
    found = settings(
        config(endpoint="http://cfg:4317", protocol="grpc", ratio=0.1, sampler="traceidratio"),
        env,
    )
    assert (found.endpoint, found.protocol) == ("http://cfg:4317", "grpc")
    assert (found.sampler.name, found.sampler.ratio) == ("traceidratio", 0.1)


def test_traces_endpoint_is_used_as_given() -> None:
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom/path"}
    assert settings(config(), env).endpoint == "http://c:4318/custom/path"


def test_span_file_when_enabled_without_a_collector() -> None:
    found = settings(config(enabled=True), {})
    assert found.enabled and found.endpoint is None
    assert found.span_file is not None and found.span_file.name == "orders.jsonl"
    via_env = settings(config(), {"OTEL_TRACES_EXPORTER": "file"})
    assert via_env.enabled and via_env.span_file is not None


def test_switches_off() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    assert not settings(config(), env).enabled
    assert not settings(
        config(), {**env, "OTEL_SDK_DISABLED": "", "OTEL_TRACES_EXPORTER": "none"}
    ).enabled
    assert settings(config(enabled=True), env).enabled  # the file's word wins


def test_headers_are_redacted_in_the_effective_config() -> None:
    cfg = config(endpoint="http://c:4318", headers={"api-key": "s3cret"})
    assert "s3cret" not in str(cfg.redacted())
    assert settings(cfg, {}).headers == {"api-key": "s3cret"}
