"""The demo's identities from the built-in CA (mesh/identity/ca.py).

One root, one leaf per service and for the load generator. With Consul, the root's trust
domain is the agent's, because that is the domain in which Consul discovery expects peers'
SPIFFE IDs. `python -m sidecar.demo.certs --ca DIR --out DIR [--consul URL]` is the compose
demo's one-shot `certs` service; the local demo calls `issue_all` directly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from discovery.endpoint import DEFAULT_TRUST_DOMAIN
from mesh.identity import ca
from sidecar.demo.plan import identities

LEAF_TTL = dt.timedelta(days=7)


def _held_domain(ca_dir: Path) -> str | None:
    try:
        return str(json.loads((ca_dir / ca.CA_INFO).read_text())["trust_domain"])
    except (OSError, ValueError, KeyError):
        return None


def issue_all(ca_dir: Path, out_root: Path, trust_domain: str) -> None:
    """A root in `ca_dir` (kept while its trust domain is still the one asked for: a dev
    agent gets a new one each start), and a fresh leaf per identity."""
    if _held_domain(ca_dir) != trust_domain:
        for name in (ca.ROOT_KEY, ca.ROOT_CERT, ca.CA_INFO):
            (ca_dir / name).unlink(missing_ok=True)
        ca.init(ca_dir, trust_domain)
    for name in identities():
        ca.issue(ca_dir, name, out_root / name, ttl=LEAF_TTL)


def consul_trust_domain(address: str, timeout: float = 60.0) -> str:
    """The agent's Connect trust domain, waiting (bounded) until its CA has a root."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{address}/v1/connect/ca/roots", timeout=5) as resp:
                domain = json.loads(resp.read()).get("TrustDomain") or ""
            if domain:
                return str(domain).lower()  # SPIFFE trust domains are lower case
        except (OSError, ValueError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"no Connect CA root from {address} within {timeout:g} s")
        time.sleep(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ca", type=Path, required=True, help="the root's directory")
    parser.add_argument("--out", type=Path, required=True, help="one directory per identity")
    parser.add_argument("--consul", help="take the trust domain from this agent")
    args = parser.parse_args(argv)
    domain = consul_trust_domain(args.consul) if args.consul else DEFAULT_TRUST_DOMAIN
    issue_all(args.ca, args.out, domain)
    print(f"issued {', '.join(identities())} in trust domain {domain}", file=sys.stderr)


if __name__ == "__main__":
    main()
