"""`tls.source` and `--tls-source`: certificates from files or from Consul's Connect CA."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import ConfigError, build
from tests.sidecar.helpers import run_mesh

pytestmark = pytest.mark.timeout(30)

NO_ENV: dict[str, str] = {}
CONSUL = {"address": "127.0.0.1:8500"}


def test_consul_source_needs_an_agent_and_no_files() -> None:
    config = build(None, {"service": "web", "tls": {"source": "consul"}, "consul": CONSUL}, NO_ENV)
    assert config.tls is not None and config.tls.source == "consul"
    with pytest.raises(ConfigError, match=r"tls\.source consul needs consul\.address"):
        build(None, {"service": "web", "tls": {"source": "consul"}}, NO_ENV)
    with pytest.raises(ConfigError, match=r"tls: .*source consul takes no cert"):
        build(
            None,
            {"service": "web", "tls": {"source": "consul", "cert": "c.pem"}, "consul": CONSUL},
            NO_ENV,
        )


def test_files_source_is_the_default_and_needs_all_three(tmp_path: Path) -> None:
    files = {"cert": "c.pem", "key": "k.pem", "roots": "r.pem"}
    config = build(None, {"service": "web", "tls": files}, NO_ENV)
    assert config.tls is not None and config.tls.source == "files"
    with pytest.raises(ConfigError, match=r"tls: .*source files needs cert, key and roots"):
        build(None, {"service": "web", "tls": {"cert": "c.pem"}}, NO_ENV)


def test_authorization_default_is_unset_unless_configured() -> None:
    config = build(None, {"service": "web"}, NO_ENV)
    assert config.authorization.default is None
    assert config.authorization.authorizer().default_allow is True


def test_the_flag_reaches_the_config() -> None:
    done = run_mesh("sidecar", "--service", "web", "--tls-source", "consul")
    assert done.returncode != 0
    assert "tls.source consul needs consul.address" in done.stderr
