"""The `mesh` command."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import anyio
import click

from discovery.static import CatalogError
from mesh.identity.errors import TlsConfigError
from sidecar.config import ConfigError, SidecarConfig, build, parse_upstream_flag
from sidecar.signals import stop_on_signals
from sidecar.traces_cli import traces

log = logging.getLogger("sidecar")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def tune_gc() -> None:
    """Fewer, cheaper collections: the data path allocates many short-lived objects and
    almost no cycles, while start-up leaves a large, permanent object graph behind.
    `freeze` moves that graph out of the collector's sight; a higher first threshold cuts
    young collections (and the p99 stalls they cause) several fold."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def run_async(main: Any, *args: Any) -> Any:
    tune_gc()
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        options = {}
    return anyio.run(main, *args, backend="asyncio", backend_options=options)


def exit_now(code: int) -> NoReturn:
    """Exit without interpreter finalization, once everything is flushed.

    The sidecar has closed its sockets and its children by now; finalization would only
    tear down module state, and in doing so can trip over a compiled coroutine cut off
    mid-request (a drain deadline), turning a clean exit into a crash.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def sidecar_options(fn: Any) -> Any:
    """Options shared by `mesh sidecar` and `mesh attach`."""
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path),
            help="YAML or JSON config file; flags override it.",
        ),
        click.option("--service", help="Name of the local service."),
        click.option("--app-port", type=int, help="Port the local app listens on."),
        click.option("--app-host", help="Host of the local app [127.0.0.1]."),
        click.option("--listen", help="Inbound (public) listener HOST:PORT."),
        click.option(
            "--upstream",
            "upstreams",
            multiple=True,
            metavar="NAME=LOCALPORT",
            help="Local port for calls to service NAME (repeatable).",
        ),
        click.option("--proxy-port", type=int, help="HTTP-proxy listener port (0: any free)."),
        click.option(
            "--passthrough",
            type=click.Choice(["allow", "deny"]),
            help="Proxy mode: non-mesh hosts go to their real address, or are refused.",
        ),
        click.option(
            "--catalog",
            type=click.Path(path_type=Path),
            help="Static discovery file (YAML or JSON).",
        ),
        click.option(
            "--consul",
            "consul_address",
            metavar="URL",
            help="Consul agent to discover peers and register with [env CONSUL_HTTP_ADDR].",
        ),
        click.option(
            "--consul-token-file",
            type=click.Path(path_type=Path),
            help="File holding the Consul ACL token [else env CONSUL_HTTP_TOKEN].",
        ),
        click.option(
            "--tls-cert",
            type=click.Path(path_type=Path),
            help="This sidecar's certificate (PEM, SPIFFE ID as URI SAN): turns on mTLS.",
        ),
        click.option("--tls-key", type=click.Path(path_type=Path), help="Its private key."),
        click.option(
            "--tls-roots", type=click.Path(path_type=Path), help="The mesh's root certificates."
        ),
        click.option(
            "--tls-source",
            type=click.Choice(["files", "consul"]),
            help="Where certificates come from: the --tls-* files, or Consul's Connect CA.",
        ),
        click.option("--admin", help="Admin API HOST:PORT [127.0.0.1:15000]."),
        click.option(
            "--access-log/--no-access-log",
            default=None,
            help="One JSON line per request on stdout.",
        ),
        click.option("--drain-timeout", type=float, help="Seconds to finish in-flight work."),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"])),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def load_config(config_file: Path | None, **flags: Any) -> SidecarConfig:
    try:
        return build_config(config_file, **flags)
    except ConfigError as exc:
        raise click.ClickException(f"config error: {exc}") from None


def config_loader(config_file: Path | None, **flags: Any) -> Callable[[], SidecarConfig]:
    """Builds the config again from the same file and flags (SIGHUP, POST /reload)."""
    return lambda: build_config(config_file, **flags)


def build_config(config_file: Path | None, **flags: Any) -> SidecarConfig:
    """The file, then the flags given; ConfigError names the key."""
    consul = {
        "address": flags.pop("consul_address", None),
        "token_file": flags.pop("consul_token_file", None),
    }
    flags["consul"] = {key: value for key, value in consul.items() if value is not None}
    tls = {part: flags.pop(f"tls_{part}", None) for part in ("cert", "key", "roots", "source")}
    flags["tls"] = {part: path for part, path in tls.items() if path is not None}
    flags["upstreams"] = tuple(parse_upstream_flag(u) for u in flags.get("upstreams") or ())
    return build(config_file, flags)


@click.group()
@click.version_option(package_name="pymesh-sidecar")
def main() -> None:
    """A sidecar service mesh: mTLS, discovery, resilience and tracing for HTTP services."""


@main.command()
@sidecar_options
def sidecar(config_file: Path | None, **flags: Any) -> None:
    """Run one sidecar in front of (inbound) and behind (outbound) a local app."""
    config = load_config(config_file, **flags)
    setup_logging(config.log_level)
    with startup_errors():
        run_async(_serve_until_signal, config, config_loader(config_file, **flags))
    exit_now(0)


@contextlib.contextmanager
def startup_errors() -> Iterator[None]:
    """Start-up failures (a port in use, a bad catalog) end with one clear line, exit 1."""
    try:
        yield
    except BaseExceptionGroup as group:
        found = group.subgroup((OSError, CatalogError, ConfigError, TlsConfigError))
        if found is None:
            raise
        first = found.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise click.ClickException(f"cannot start: {first}") from None
    except (OSError, CatalogError, ConfigError, TlsConfigError) as exc:
        raise click.ClickException(f"cannot start: {exc}") from None


async def _serve_until_signal(
    config: SidecarConfig, loader: Callable[[], SidecarConfig] | None = None
) -> None:
    from sidecar.assemble import make_sidecar

    sidecar = make_sidecar(config)
    sidecar.config_loader = loader
    async with anyio.create_task_group() as tg:
        # Signals are handled from the start: a SIGTERM during start-up is a clean stop too.
        await tg.start(stop_on_signals, sidecar.request_stop)
        await tg.start(sidecar.serve)
        log.info("ready")
        await sidecar.wait_stopped()
        tg.cancel_scope.cancel()


@main.command()
@click.option(
    "--config",
    "config_file",
    required=True,
    type=click.Path(path_type=Path),
    help="The gateway's YAML or JSON config (routes, auth, limits, discovery, tls).",
)
@click.option("--admin", help="Admin API HOST:PORT [127.0.0.1:15000].")
@click.option("--access-log/--no-access-log", default=None, help="One JSON line per request.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def gateway(config_file: Path, **flags: Any) -> None:
    """Run the mesh's ingress gateway: routes, JWT/API keys, rate limits, cache, gzip."""
    from sidecar.gateway import serve_gateway_until_signal
    from sidecar.gateway_config import GatewayConfig

    try:
        config = build(config_file, flags, model=GatewayConfig)
    except ConfigError as exc:
        raise click.ClickException(f"config error: {exc}") from None
    assert isinstance(config, GatewayConfig)
    setup_logging(config.log_level)
    with startup_errors():
        run_async(serve_gateway_until_signal, config)


@main.command(context_settings={"ignore_unknown_options": False})
@sidecar_options
@click.argument("command", nargs=-1, required=True)
def attach(config_file: Path | None, command: tuple[str, ...], **flags: Any) -> None:
    """Run COMMAND (after --) with its own sidecar; the sidecar is ready before it starts."""
    from sidecar.attach import run_attached

    if flags.get("proxy_port") is None:
        flags["proxy_port"] = 0
    config = load_config(config_file, **flags)
    setup_logging(config.log_level)
    with startup_errors():
        code = run_async(run_attached, config, list(command), config_loader(config_file, **flags))
    exit_now(code)


@main.command()
@click.option(
    "--duration",
    type=float,
    default=0.0,
    help="Stop after this many seconds (0: run until Ctrl-C).",
)
@click.option("--rps", type=float, default=20.0, help="Requests per second the load sends.")
@click.option(
    "--discovery",
    type=click.Choice(["static", "consul", "auto"]),
    default="static",
    show_default=True,
    help="Static catalog, or a Consul dev agent the demo starts (auto: Consul when "
    "scripts/install-consul.sh can provide one, else static).",
)
@click.option(
    "--payments",
    type=click.Choice(["ok", "slow", "failing", "down"]),
    default="ok",
    show_default=True,
    help="The payments switch once traffic starts (flip it while running: o/s/f/d + Enter).",
)
def demo(duration: float, rps: float, discovery: str, payments: str) -> None:
    """Run the local demo mesh: services with sidecars behind the gateway, traffic, summary."""
    from sidecar.demo.local import run_demo

    sys.exit(run_async(run_demo, duration, rps, discovery, payments))


@main.group()
def ca() -> None:
    """The built-in certificate authority (for meshes without Consul, and the demo)."""


@ca.command("init")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--trust-domain", default="mesh.local", show_default=True)
def ca_init(directory: Path, trust_domain: str) -> None:
    """Create a root (EC P-256) in DIRECTORY. Its key never goes to a sidecar."""
    from mesh.identity import ca as authority

    try:
        root = authority.init(directory, trust_domain)
    except authority.CaError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"root certificate: {root} (trust domain {trust_domain})")


@ca.command("issue")
@click.option("--ca", "ca_dir", required=True, type=click.Path(path_type=Path))
@click.option("--service", required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--ttl", default="24h", show_default=True, help="Lifetime: 90m, 24h, 7d.")
@click.option("--datacenter", default="dc1", show_default=True)
def ca_issue(ca_dir: Path, service: str, out_dir: Path, ttl: str, datacenter: str) -> None:
    """Write a leaf for SERVICE (cert.pem, key.pem, roots.pem) into --out; re-run to rotate."""
    import datetime as dt

    from mesh.identity import ca as authority

    units = {"m": 60, "h": 3600, "d": 86400}
    digits = ttl[:-1]
    if len(ttl) < 2 or ttl[-1] not in units or not digits.isdigit() or not 0 < int(digits) < 10**7:
        raise click.ClickException(f"--ttl {ttl!r}: expected a number with m, h or d")
    lifetime = dt.timedelta(seconds=int(ttl[:-1]) * units[ttl[-1]])
    if not dt.timedelta(minutes=1) <= lifetime <= authority.MAX_LEAF_TTL:
        raise click.ClickException(f"--ttl {ttl!r}: between 1m and {authority.MAX_LEAF_TTL.days}d")
    try:
        leaf = authority.issue(ca_dir, service, out_dir, lifetime, datacenter)
    except authority.CaError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"{leaf.identity}: serial {leaf.serial:x}, valid until {leaf.not_after:%Y-%m-%d %H:%M}Z"
    )


main.add_command(traces)
