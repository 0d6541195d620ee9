"""Sidecar configuration: validation errors, file-versus-flag precedence, `/config`, `--help`.

Invalid configuration is refused before anything listens, with a message that names the
bad key and says why; both in-process (`sidecar.config.build`) and through `mesh sidecar`
(non-zero exit, message on stderr, no traceback). Flags override the config file; the admin
API's `/config` shows the effective values, with secret-looking keys redacted.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from discovery.static import CatalogError, load_catalog
from sidecar import cli
from sidecar.config import (
    ConfigError,
    SidecarConfig,
    _Model,
    build,
    parse_upstream_flag,
)
from tests.sidecar.helpers import refuses, run_mesh
from tests.support.processes import MeshProcess, free_port, http_get, write_yaml

pytestmark = pytest.mark.timeout(30)


def config_error(file: Path | None, flags: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as caught:
        build(file, flags)
    return str(caught.value)


# -- in-process validation --------------------------------------------------------------------


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    file = write_yaml(tmp_path / "c.yaml", {"service": "web", "admin_port": 15001})
    assert config_error(file, {}) == "admin_port: unknown key"


def test_unknown_nested_key_is_named_with_its_path(tmp_path: Path) -> None:
    file = write_yaml(tmp_path / "c.yaml", {"service": "web", "limits": {"max_body": 1}})
    assert config_error(file, {}) == "limits.max_body: unknown key"


def test_upstream_port_out_of_range_is_named(tmp_path: Path) -> None:
    file = write_yaml(
        tmp_path / "c.yaml",
        {"service": "web", "upstreams": [{"name": "payments", "local_port": 70000}]},
    )
    message = config_error(file, {})
    assert message.startswith("upstreams.0.local_port: ")
    assert "65535" in message


def test_upstream_flag_without_port_is_refused() -> None:
    for text in ("payments", "payments=", "=8080", "payments=80x"):
        with pytest.raises(ConfigError) as caught:
            parse_upstream_flag(text)
        assert str(caught.value) == f"--upstream {text!r}: expected NAME=LOCALPORT"
    assert parse_upstream_flag("payments=9001") == {"name": "payments", "local_port": 9001}


def test_listen_without_app_port_is_refused() -> None:
    message = config_error(None, {"service": "web", "listen": "127.0.0.1:8443"})
    assert "listen needs app_port" in message


def test_malformed_yaml_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("service: [web\n")
    message = config_error(file, {})
    assert message.startswith(f"config file {file}: not valid: ")


def test_malformed_json_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "c.json"
    file.write_text('{"service": "web",}')
    assert config_error(file, {}).startswith(f"config file {file}: not valid: ")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("- service: web\n")
    assert config_error(file, {}) == f"config file {file}: expected a mapping at the top level"


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "nope.yaml"
    assert config_error(file, {}) == f"config file {file}: No such file or directory"


@pytest.mark.parametrize(
    ("flags", "where", "why"),
    [
        ({"admin": "15000"}, "admin", "is not HOST:PORT"),
        ({"listen": "127.0.0.1:99999", "app_port": 8080}, "listen", "is not HOST:PORT"),
        ({"app_port": 0}, "app_port", "greater than or equal to 1"),
        ({"drain_timeout": -1.0}, "drain_timeout", "greater than or equal to 0"),
        ({"log_level": "loud"}, "log_level", "'debug', 'info', 'warning' or 'error'"),
        ({"service": "bad name!"}, "service", "should match pattern"),
    ],
)
def test_bad_values_are_named_with_the_reason(
    flags: dict[str, object], where: str, why: str
) -> None:
    message = config_error(None, {"service": "web", **flags})
    assert message.startswith(f"{where}: ")
    assert why in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    file = write_yaml(tmp_path / "c.yaml", {"servce": "web", "app_port": 70000})
    message = config_error(file, {})
    assert set(message.split("; ")) >= {"servce: unknown key", "service: Field required"}
    assert "app_port: Input should be less than or equal to 65535" in message


def test_two_upstreams_on_one_port_are_refused() -> None:
    upstreams = (
        {"name": "a", "local_port": 9001},
        {"name": "b", "local_port": 9001},
    )
    message = config_error(None, {"service": "web", "upstreams": upstreams})
    assert message == "upstreams: two upstreams share a local_port"


def test_missing_catalog_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(CatalogError, match=re.escape(f"catalog {path}: No such file")):
        load_catalog(path)


@pytest.mark.parametrize(
    ("services", "message"),
    [
        ({"pay": ["no-port"]}, "services.pay[0]: 'no-port' is not HOST:PORT"),
        ({"pay": "127.0.0.1:1"}, "services.pay: expected a list of endpoints"),
        (
            {"pay": ["127.0.0.1:1", {"address": "127.0.0.1:2", "weight": 0}]},
            "services.pay[1].weight: expected a positive integer",
        ),
        ({"pay": [{"identity": "x"}]}, "services.pay[0]: expected 'HOST:PORT' or a mapping"),
    ],
)
def test_catalog_bad_entry_is_named(tmp_path: Path, services: object, message: str) -> None:
    path = write_yaml(tmp_path / "catalog.yaml", {"services": services})
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value).startswith(message)


def test_flags_override_the_file_and_add_upstreams(tmp_path: Path) -> None:
    file = write_yaml(
        tmp_path / "c.yaml",
        {
            "service": "web",
            "admin": "127.0.0.1:1111",
            "drain_timeout": 9,
            "log_level": "warning",
            "upstreams": [{"name": "a", "local_port": 9001}],
        },
    )
    config = build(
        file,
        {
            "admin": "127.0.0.1:2222",
            "drain_timeout": None,  # a flag not given leaves the file's value
            "access_log": False,
            "upstreams": ({"name": "b", "local_port": 9002},),
        },
    )
    assert config.admin == "127.0.0.1:2222"
    assert config.drain_timeout == 9
    assert config.log_level == "warning"
    assert config.access_log is False
    assert [(u.name, u.local_port) for u in config.upstreams] == [("a", 9001), ("b", 9002)]


def test_defaults() -> None:
    config = build(None, {"service": "web"})
    assert config.admin == "127.0.0.1:15000"
    assert config.app_host == "127.0.0.1"
    assert config.proxy_address == "127.0.0.1"
    assert config.passthrough == "allow"
    assert config.drain_timeout == 30
    assert config.listen is None


def test_config_is_frozen() -> None:
    config = build(None, {"service": "web"})
    with pytest.raises(ValueError, match="frozen"):
        config.admin = "0.0.0.0:15000"  # type: ignore[misc]


class _ConsulSecrets(_Model):
    address: str = "127.0.0.1:8500"
    token: str | None = None


class _ConfigWithSecrets(SidecarConfig):
    consul: _ConsulSecrets = _ConsulSecrets()
    tls_private_key_file: str | None = None
    jwt_secret: str | None = None
    headers: tuple[dict[str, str], ...] = ()


def test_redacted_hides_secret_looking_keys_at_any_depth() -> None:
    config = _ConfigWithSecrets(
        service="web",
        consul=_ConsulSecrets(token="tok-123-very-secret"),
        tls_private_key_file="/etc/mesh/key.pem",
        headers=({"name": "x-api-token", "x_auth_token": "hdr-456-secret"},),
    )
    shown = config.redacted()
    assert shown["consul"] == {"address": "127.0.0.1:8500", "token": "<redacted>"}
    assert shown["tls_private_key_file"] == "<redacted>"
    assert shown["headers"] == [{"name": "x-api-token", "x_auth_token": "<redacted>"}]
    # An unset secret stays visibly unset; ordinary keys keep their values.
    assert shown["jwt_secret"] is None
    assert shown["service"] == "web"
    assert shown["admin"] == "127.0.0.1:15000"
    text = json.dumps(shown)
    for secret in ("tok-123-very-secret", "/etc/mesh/key.pem", "hdr-456-secret"):
        assert secret not in text


def test_redacted_is_the_whole_effective_config_as_json() -> None:
    config = build(None, {"service": "web", "app_port": 8080, "listen": "127.0.0.1:8443"})
    shown = config.redacted()
    assert json.loads(json.dumps(shown)) == shown
    assert set(shown) == set(SidecarConfig.model_fields)
    assert shown["limits"]["max_headers"] == config.limits.max_headers
    assert shown["inbound_timeouts"] == {"connect": 1.0, "request": 30.0}


# -- through the command line ------------------------------------------------------------------


def assert_refused(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Non-zero exit, every needle on stderr, and no traceback (the user sees one line)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_cli_unknown_key_in_file(tmp_path: Path) -> None:
    file = write_yaml(tmp_path / "c.yaml", {"service": "web", "bogus": 1})
    result = run_mesh("sidecar", "--config", str(file))
    assert_refused(result, "config error: bogus: unknown key")


def test_cli_upstream_port_out_of_range(tmp_path: Path) -> None:
    file = write_yaml(
        tmp_path / "c.yaml",
        {"service": "web", "upstreams": [{"name": "payments", "local_port": 70000}]},
    )
    result = run_mesh("sidecar", "--config", str(file))
    assert_refused(result, "upstreams.0.local_port", "less than or equal to 65535")


def test_cli_listen_without_app_port() -> None:
    result = run_mesh("sidecar", "--service", "web", "--listen", "127.0.0.1:8443")
    assert_refused(result, "listen needs app_port")


def test_cli_malformed_yaml(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("service: [web\n")
    result = run_mesh("sidecar", "--config", str(file))
    assert_refused(result, f"config file {file}: not valid")


def test_cli_missing_catalog(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    admin = free_port()
    result = run_mesh(
        "sidecar", "--service", "web", "--catalog", str(path), "--admin", f"127.0.0.1:{admin}"
    )
    assert_refused(result, f"catalog {path}: No such file or directory")


def test_cli_catalog_with_bad_entry(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "catalog.yaml", {"services": {"pay": ["127.0.0.1"]}})
    admin = free_port()
    result = run_mesh(
        "sidecar", "--service", "web", "--catalog", str(path), "--admin", f"127.0.0.1:{admin}"
    )
    assert_refused(result, "services.pay[0]: '127.0.0.1' is not HOST:PORT")


def test_cli_bad_flag_value_is_named() -> None:
    result = run_mesh("sidecar", "--service", "web", "--app-port", "70000")
    assert_refused(result, "app_port", "65535")


@pytest.mark.parametrize("command", ["sidecar", "attach"])
def test_cli_upstream_flag_without_port(command: str) -> None:
    args = ["--service", "web", "--upstream", "payments"]
    if command == "attach":
        args += ["--", "true"]
    result = run_mesh(command, *args)
    assert_refused(result, "--upstream 'payments': expected NAME=LOCALPORT")
    assert result.stderr.startswith("Error: ")


def test_cli_flags_override_file_and_config_shows_effective_values(
    tmp_path: Path, procs: list[MeshProcess]
) -> None:
    admin_in_file, admin_flag = free_port(), free_port()
    upstream_in_file, upstream_flag = free_port(), free_port()
    catalog = write_yaml(tmp_path / "catalog.yaml", {"services": {"a": [], "b": []}})
    file = write_yaml(
        tmp_path / "c.yaml",
        {
            "service": "web",
            "admin": f"127.0.0.1:{admin_in_file}",
            "drain_timeout": 9,
            "log_level": "warning",
            "catalog": str(catalog),
            "upstreams": [{"name": "a", "local_port": upstream_in_file}],
        },
    )
    flags = ["--admin", f"127.0.0.1:{admin_flag}", "--drain-timeout", "2"]
    flags += ["--upstream", f"b={upstream_flag}"]
    proc = MeshProcess(["sidecar", "--config", str(file), *flags], tmp_path)
    procs.append(proc)
    proc.wait_ready()

    # The flag's admin address answers; the file's is not used.
    status, headers, body = http_get(f"http://127.0.0.1:{admin_flag}/config")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert refuses(admin_in_file)
    shown = json.loads(body)
    expected = build(
        file,
        {
            "admin": f"127.0.0.1:{admin_flag}",
            "drain_timeout": 2.0,
            "upstreams": ({"name": "b", "local_port": upstream_flag},),
        },
    ).redacted()
    assert shown == expected
    assert shown["admin"] == f"127.0.0.1:{admin_flag}"
    assert shown["drain_timeout"] == 2.0
    assert shown["log_level"] == "warning"
    assert shown["catalog"] == str(catalog)
    assert [(u["name"], u["local_port"]) for u in shown["upstreams"]] == [
        ("a", upstream_in_file),
        ("b", upstream_flag),
    ]
    # Both upstream listeners from the merged config are really up.
    listeners = proc.admin("/listeners")
    assert listeners["upstream:a"]["address"] == f"127.0.0.1:{upstream_in_file}"
    assert listeners["upstream:b"]["address"] == f"127.0.0.1:{upstream_flag}"
    assert proc.stop() == 0


SIDECAR_FLAGS = [
    "--config", "--service", "--app-port", "--app-host", "--listen", "--upstream",
    "--proxy-port", "--passthrough", "--catalog", "--admin", "--access-log",
    "--no-access-log", "--drain-timeout", "--log-level", "--help",
]  # fmt: skip


@pytest.mark.parametrize("command", ["sidecar", "attach"])
def test_help_lists_every_flag(command: str) -> None:
    result = run_mesh(command, "--help")
    assert result.returncode == 0, result.stderr
    shown = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", result.stdout))
    declared = {
        opt
        for param in getattr(cli, command).params
        for opt in (*param.opts, *param.secondary_opts)
        if opt.startswith("--")
    }
    assert set(SIDECAR_FLAGS) - {"--help"} <= declared
    assert declared | {"--help"} <= shown
    assert set(SIDECAR_FLAGS) <= shown


def test_top_level_help_lists_the_commands() -> None:
    result = run_mesh("--help")
    assert result.returncode == 0, result.stderr
    for command in ("sidecar", "attach", "demo"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), result.stdout
