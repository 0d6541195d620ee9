"""A throw-away network namespace joined to the host by a veth pair, for network faults.

    with network_namespace("up") as ns:
        ns.blackhole(8080)         # SYNs to ns.address:8080 vanish (iptables DROP)
        ns.refuse(8081)            # connects to ns.address:8081 get a RST (REJECT tcp-reset)
        ...                        # point a sidecar at f"{ns.address}:8080"

The namespace gets a unique name (it includes this process's PID), a free 10.99.N.0/30 with
the host side at .1 and the namespace side (`address`) at .2, and its own `lo` up. The
iptables rules live in the namespace's own tables, so they never touch the host's. On exit,
normal or not, the namespace is deleted (its rules and its end of the pair go with it) and
the host end of the pair is removed if it lingers; what a killed test process could not
remove is swept by the next one.

Needs root and the `ip` (iproute2) and `iptables` tools; `require_netns()` skips the
calling test, naming what is missing, when they are not there.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: Namespaces get 10.99.N.0/30 for a free N; 10.99.0.0/30 is left to hand-made set-ups
#: (RELIABILITY.md's `up` namespace).
POOL = ipaddress.IPv4Network("10.99.0.0/16")
CANDIDATES = [ipaddress.IPv4Network(f"10.99.{n}.0/30") for n in range(1, 256)]
#: Serialises choosing a subnet among test processes that run at the same time.
LOCK_FILE = Path("/tmp/mesh-tests-netns.lock")
_serial = itertools.count(1)
#: Names this module gives: namespace `mesh-TAG-PID-SERIAL`, host link `mhPIDxSERIAL`.
STALE_NAMESPACE = re.compile(r"^mesh-.+-(?P<pid>\d+)-(?P<serial>\d+)$")
STALE_LINK = re.compile(r"^\d+: (?P<link>mh(?P<pid>\d+)x\d+)[@:]")


def missing_requirements() -> str:
    """Why network namespaces cannot be used here ("" when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (scripts/install-tools)"
    return ""


def require_netns() -> None:
    """Skip the calling test when namespaces cannot be made here."""
    why = missing_requirements()
    if why:
        pytest.skip(why)


def _run(args: Sequence[str]) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _subnets_in_use() -> set[ipaddress.IPv4Network]:
    used = set()
    for line in _run(["ip", "-4", "-o", "addr", "show"]).splitlines():
        for word in line.split():
            if "/" in word and word[0].isdigit():
                net = ipaddress.IPv4Interface(word).network
                if net.overlaps(POOL):
                    used.add(net)
    return used


@dataclass
class NetNamespace:
    name: str
    #: Interface names (at most 15 characters): the host end and the namespace end.
    host_link: str
    ns_link: str
    subnet: ipaddress.IPv4Network
    rules: list[list[str]] = field(default_factory=list)

    @property
    def host_address(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def address(self) -> str:
        """The namespace side: what a sidecar on the host connects to."""
        return str(self.subnet.network_address + 2)

    def run(self, *args: str) -> str:
        """Run a command inside the namespace."""
        return _run(["ip", "netns", "exec", self.name, *args])

    def add_rule(self, *rule: str) -> None:
        """Append an iptables rule inside the namespace (e.g. "INPUT", "-p", "tcp", ...)."""
        self.run("iptables", "-A", *rule)
        self.rules.append(list(rule))

    def remove_rule(self, *rule: str) -> None:
        self.run("iptables", "-D", *rule)
        self.rules.remove(list(rule))

    def blackhole(self, port: int) -> None:
        """Connects to `address:port` hang: every packet to it is dropped."""
        self.add_rule("INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP")

    def refuse(self, port: int) -> None:
        """Connects to `address:port` are refused with a TCP reset by the firewall."""
        self.add_rule(
            "INPUT", "-p", "tcp", "--dport", str(port), "-j", "REJECT", "--reject-with", "tcp-reset"
        )

    def iptables_rules(self) -> str:
        return self.run("iptables", "-S")


def _remove(name: str, host_link: str) -> None:
    """Delete the namespace (its rules and its end of the pair go with it), then the host
    end if it lingers; each step is allowed to find nothing left to delete."""
    for args in (["ip", "netns", "del", name], ["ip", "link", "del", host_link]):
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            _run(args)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale() -> None:
    """Remove what test processes killed before their clean-up left behind: namespaces and
    host links whose names carry a PID that no longer runs."""
    for line in _run(["ip", "netns", "list"]).splitlines():
        name = line.split(" ", 1)[0]
        found = STALE_NAMESPACE.match(name)
        if found and not _alive(int(found["pid"])):
            _remove(name, f"mh{found['pid']}x{found['serial']}"[:15])
    for line in _run(["ip", "-o", "link", "show"]).splitlines():
        found = STALE_LINK.match(line)
        if found and not _alive(int(found["pid"])):
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _run(["ip", "link", "del", found["link"]])


@contextlib.contextmanager
def network_namespace(tag: str = "ns") -> Iterator[NetNamespace]:
    """A namespace with a veth pair on a free 10.99.N.0/30; removed on exit."""
    require_netns()
    serial = next(_serial)
    pid = os.getpid()
    name = f"mesh-{tag}-{pid}-{serial}"
    # veth names are limited to 15 characters; the PID and serial keep them unique.
    host_link, ns_link = f"mh{pid}x{serial}"[:15], f"mn{pid}x{serial}"[:15]
    LOCK_FILE.touch(exist_ok=True)
    with open(LOCK_FILE) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _sweep_stale()
        used = _subnets_in_use()
        subnet = next((s for s in CANDIDATES if not any(s.overlaps(u) for u in used)), None)
        if subnet is None:
            raise RuntimeError("no free 10.99.N.0/30 left")
        ns = NetNamespace(name, host_link, ns_link, subnet)
        try:
            _run(["ip", "netns", "add", name])
            _run(["ip", "link", "add", host_link, "type", "veth", "peer", "name", ns_link])
            _run(["ip", "link", "set", ns_link, "netns", name])
            _run(["ip", "addr", "add", f"{ns.host_address}/30", "dev", host_link])
            _run(["ip", "link", "set", host_link, "up"])
            _run(["ip", "-n", name, "addr", "add", f"{ns.address}/30", "dev", ns_link])
            _run(["ip", "-n", name, "link", "set", ns_link, "up"])
            _run(["ip", "-n", name, "link", "set", "lo", "up"])
        except BaseException:
            _remove(name, host_link)
            raise
    try:
        yield ns
    finally:
        _remove(name, host_link)
