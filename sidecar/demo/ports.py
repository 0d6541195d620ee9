"""Loopback ports for the demo's listeners, chosen below the kernel's ephemeral range.

A port found free by binding port 0 comes from the ephemeral range, the range the kernel
also gives outgoing connections as their source port: between the probe and the listener's
own bind, any connection on the machine may take it (a demo app then dies with "Address
already in use", seen under a busy test suite). Ports below that range are never handed out
that way, so one that is free now stays free until someone binds it on purpose.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: How far below the ephemeral range the demo looks (20,000 ports: collisions are unlikely).
SPAN = 20_000

_handed_out: set[int] = set()
_random = random.SystemRandom()


def ephemeral_low() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int, kinds: tuple[int, ...]) -> bool:
    try:
        for kind in kinds:
            with socket.socket(socket.AF_INET, kind) as probe:
                probe.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def free_port(kinds: tuple[int, ...] = (socket.SOCK_STREAM,)) -> int:
    """A loopback port free now for every socket kind in `kinds` (Consul's serf uses TCP and
    UDP on one port), not handed out before by this process."""
    high = ephemeral_low()
    low = max(1024, high - SPAN)
    if high - low >= 1000:
        for _ in range(200):
            port = _random.randrange(low, high)
            if port not in _handed_out and _bindable(port, kinds):
                _handed_out.add(port)
                return port
    # An ephemeral range that starts too low leaves no room below it: ask the kernel.
    for _ in range(200):
        with socket.socket(socket.AF_INET, kinds[0]) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in _handed_out and _bindable(port, kinds):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port found")
