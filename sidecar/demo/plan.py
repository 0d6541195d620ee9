"""Each demo sidecar's config, made from the topology for both the local and compose demos.

Only where things live differs between the two (ports, addresses, file paths); what a
sidecar is (its service, mTLS, who may call it) comes from here, so a test can check that
both demos give every sidecar the same policy.
"""

from __future__ import annotations

from typing import Any

from sidecar.demo.topology import (
    ENTRY,
    FAILING_SHARE,
    FAULTY,
    LOAD_CLIENT,
    ROUTES,
    SERVICES,
    SLOW_MS,
    callers,
    service,
)


def identities() -> tuple[str, ...]:
    """Every identity the demo's CA issues: each service, and the load generator."""
    return (*(s.name for s in SERVICES), LOAD_CLIENT)


def tls_files(certs_root: str, name: str) -> dict[str, str]:
    """Where `mesh ca issue --out <certs_root>/<name>` put that identity's files."""
    return {part: f"{certs_root}/{name}/{part}.pem" for part in ("cert", "key", "roots")}


def sidecar_config(name: str, certs_root: str, **where: Any) -> dict[str, Any]:
    """One sidecar's config: mTLS, and authorization that matches the call graph.

    `where` adds the deployment's keys (ports, discovery, admin address).
    """
    config: dict[str, Any] = {
        "service": name,
        "access_log": True,
        # The demo's apps call only mesh services: anything else is refused at once.
        "passthrough": "deny",
        "tls": tls_files(certs_root, name),
    }
    if name != LOAD_CLIENT:
        # Deny by default; allow exactly the services that call this one.
        config["authorization"] = {"default": "deny", "allow": list(callers(name))}
    config.update(where)
    return config


def app_env(name: str, app_port: int, mode_file: str) -> dict[str, str]:
    """An app's environment: who it is, whom it calls, and (payments) its fault switch."""
    env = {
        "DEMO_SERVICE": name,
        "DEMO_PORT": str(app_port),
        "DEMO_CALLS": ",".join(service(name).calls),
    }
    if name == ENTRY:
        env["DEMO_ROUTES"] = ",".join(f"{prefix}={target}" for prefix, target in ROUTES)
    if name == FAULTY:
        env |= {
            "DEMO_MODE_FILE": mode_file,
            "DEMO_SLOW_MS": str(SLOW_MS),
            "DEMO_FAILING_SHARE": str(FAILING_SHARE),
        }
    return env
