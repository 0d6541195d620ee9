"""The `consul:` config keys, the consul CLI's environment variables, and their precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import ConfigError, build
from tests.sidecar.helpers import run_mesh
from tests.support.processes import write_yaml

pytestmark = pytest.mark.timeout(30)

NO_ENV: dict[str, str] = {}


def test_without_an_address_discovery_stays_static() -> None:
    config = build(None, {"service": "web"}, environ=NO_ENV)
    assert config.consul.address is None
    assert config.consul.registration is True
    assert (config.consul.check_interval, config.consul.drain_grace) == (2.0, 5.0)


def test_a_bare_host_port_means_http() -> None:
    config = build(None, {"service": "web", "consul": {"address": "127.0.0.1:8500"}}, NO_ENV)
    assert config.consul.address == "http://127.0.0.1:8500"
    config = build(None, {"service": "web", "consul": {"address": "https://c:8501/"}}, NO_ENV)
    assert config.consul.address == "https://c:8501"


def test_environment_fills_in_what_file_and_flags_leave_unset(tmp_path: Path) -> None:
    env = {"CONSUL_HTTP_ADDR": "10.0.0.1:8500", "CONSUL_CACERT": "/etc/consul/ca.pem"}
    config = build(None, {"service": "web"}, environ=env)
    assert config.consul.address == "http://10.0.0.1:8500"
    assert str(config.consul.ca_file) == "/etc/consul/ca.pem"
    # The file wins over the environment, a flag over both.
    file = write_yaml(tmp_path / "c.yaml", {"consul": {"address": "http://file:8500"}})
    assert build(file, {"service": "web"}, env).consul.address == "http://file:8500"
    flags = {"service": "web", "consul": {"address": "http://flag:8500"}}
    assert build(file, flags, env).consul.address == "http://flag:8500"
    # Flags merge into the file's consul section rather than replacing it.
    file = write_yaml(tmp_path / "d.yaml", {"consul": {"drain_grace": 2}})
    config = build(file, {"service": "web", "consul": {"token_file": "/t"}}, NO_ENV)
    assert (config.consul.drain_grace, str(config.consul.token_file)) == (2, "/t")


def test_a_configured_catalog_is_not_overridden_by_the_environment(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    env = {"CONSUL_HTTP_ADDR": "127.0.0.1:8500"}
    config = build(None, {"service": "web", "catalog": catalog}, environ=env)
    assert config.consul.address is None and config.catalog == catalog


@pytest.mark.parametrize(
    ("consul", "message"),
    [
        ({"address": "ftp://x:1"}, "consul.address: 'ftp://x:1' is not an http"),
        ({"check_interval": 5, "check_ttl": 6}, "check_ttl must be at least twice"),
        ({"deregister_critical_after": 30}, "consul.deregister_critical_after: Input should be"),
        ({"check_path": "health"}, "consul.check_path: String should match"),
        ({"weight": 0}, "consul.weight: Input should be greater than or equal to 1"),
        ({"tokn_file": "/t"}, "consul.tokn_file: unknown key"),
    ],
)
def test_invalid_consul_settings_are_named(consul: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(None, {"service": "web", "consul": consul}, environ=NO_ENV)
    assert message in str(caught.value)


def test_catalog_and_consul_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"catalog and consul\.address exclude each other"):
        build(
            None,
            {"service": "web", "catalog": tmp_path / "c.yaml", "consul": {"address": "c:8500"}},
            environ=NO_ENV,
        )


def test_cli_refuses_both_sources_and_a_missing_token_file(tmp_path: Path) -> None:
    catalog = write_yaml(tmp_path / "catalog.yaml", {"services": {}})
    result = run_mesh(
        "sidecar", "--service", "web", "--catalog", str(catalog), "--consul", "127.0.0.1:1"
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "catalog and consul.address exclude each other" in result.stderr

    missing = tmp_path / "no-such-token"
    result = run_mesh(
        "sidecar", "--service", "web", "--consul", "127.0.0.1:1",
        "--consul-token-file", str(missing), "--admin", "127.0.0.1:0",
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"cannot start: consul.token_file {missing}: No such file or directory" in result.stderr
    result = run_mesh("sidecar", "--help")
    assert "--consul URL" in result.stdout and "--consul-token-file" in result.stdout
