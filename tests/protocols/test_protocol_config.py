"""Config for the protocols: TCP upstreams and apps, the tunnel idle timeout."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, build, parse_upstream_flag


def test_upstream_flag_declares_a_tcp_upstream() -> None:
    assert parse_upstream_flag("redis=16379/tcp") == {
        "name": "redis",
        "local_port": 16379,
        "protocol": "tcp",
    }
    with pytest.raises(ConfigError, match="expected NAME=LOCALPORT"):
        parse_upstream_flag("redis=16379/udp")


def test_protocols_default_to_http_and_accept_tcp() -> None:
    config = build(None, {"service": "web", "upstreams": [{"name": "db", "local_port": 5433}]})
    assert config.upstreams[0].protocol is None  # HTTP, unless Consul says TCP
    assert config.app_protocol == "http"
    assert config.tunnel.idle_timeout == 300.0
    config = build(
        None,
        {
            "service": "redis",
            "app_port": 6379,
            "app_protocol": "tcp",
            "tunnel": {"idle_timeout": 5},
            "upstreams": [{"name": "db", "local_port": 5433, "protocol": "tcp"}],
        },
    )
    assert (config.app_protocol, config.upstreams[0].protocol) == ("tcp", "tcp")
    assert config.tunnel.idle_timeout == 5.0


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"app_protocol": "udp"}, "app_protocol"),
        (
            {"upstreams": [{"name": "db", "local_port": 1, "protocol": "h3"}]},
            "upstreams.0.protocol",
        ),
        ({"tunnel": {"idle_timeout": 0}}, "tunnel.idle_timeout"),
    ],
)
def test_bad_protocol_settings_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(None, {"service": "web", **data})
    assert str(caught.value).startswith(f"{key}: ")
