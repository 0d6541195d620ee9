"""Each demo process's config, made from the topology for both the local and compose demos.

Only where things live differs between the two (ports, addresses, file paths); what a
sidecar or the gateway is (its identity, mTLS, who may call it, its routes) comes from
here, so a test can check that both demos give every process the same policy.
"""

from __future__ import annotations

from typing import Any

from sidecar.demo.topology import (
    ENTRY,
    ENTRY_ROUTES,
    FAILING_SHARE,
    FAULTY,
    SLOW_MS,
    callers,
    members,
    service,
)


def identities() -> tuple[str, ...]:
    """Every identity the demo's CA issues: the gateway and each service."""
    return members()


def tls_files(certs_root: str, name: str) -> dict[str, str]:
    """Where `mesh ca issue --out <certs_root>/<name>` put that identity's files."""
    return {part: f"{certs_root}/{name}/{part}.pem" for part in ("cert", "key", "roots")}


def sidecar_config(name: str, certs_root: str, **where: Any) -> dict[str, Any]:
    """One service's sidecar config: mTLS, and authorization that matches the call graph.

    `where` adds the deployment's keys (ports, discovery, admin address).
    """
    config: dict[str, Any] = {
        "service": name,
        "access_log": True,
        # The demo's apps call only mesh services: anything else is refused at once.
        "passthrough": "deny",
        "tls": tls_files(certs_root, name),
        # Deny by default; allow exactly the services (and the gateway) that call this one.
        "authorization": {"default": "deny", "allow": list(callers(name))},
    }
    config.update(where)
    return config


def gateway_config(certs_root: str, listen: str, **where: Any) -> dict[str, Any]:
    """The gateway's config (`mesh gateway`): public HTTP on `listen`, the topology's routes,
    mTLS to the shop under its own identity. `where` adds discovery and the admin address."""
    routes = [
        {"name": route.service, "prefix": route.prefix, "service": route.service,
         "cache": route.cache}
        for route in ENTRY_ROUTES
    ]  # fmt: skip
    config: dict[str, Any] = {
        "service": ENTRY,
        "access_log": True,
        "tls": tls_files(certs_root, ENTRY),
        "ingress": {"listen": listen},
        "routes": routes,
    }
    config.update(where)
    return config


def app_env(name: str, app_port: int, mode_file: str) -> dict[str, str]:
    """An app's environment: who it is, whom it calls, and (payments) its fault switch."""
    spec = service(name)
    env = {
        "DEMO_SERVICE": name,
        "DEMO_PORT": str(app_port),
        "DEMO_CALLS": ",".join(spec.calls),
    }
    if spec.max_age:
        env["DEMO_MAX_AGE"] = str(spec.max_age)
    if name == FAULTY:
        env |= {
            "DEMO_MODE_FILE": mode_file,
            "DEMO_SLOW_MS": str(SLOW_MS),
            "DEMO_FAILING_SHARE": str(FAILING_SHARE),
        }
    return env
