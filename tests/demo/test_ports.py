"""The demo's listener ports come from below the kernel's ephemeral range, so no outgoing
connection can take one between its choice and the listener's bind."""

from __future__ import annotations

import socket

from sidecar.demo.ports import ephemeral_low, free_port


def test_ports_are_below_the_ephemeral_range_bindable_and_never_repeated() -> None:
    low = ephemeral_low()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    if low > 5000:  # room below it: the usual case (Linux starts it at 32768)
        assert all(port < low for port in ports)
    for port in ports[:5]:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))


def test_a_port_for_tcp_and_udp_is_free_for_both() -> None:
    port = free_port((socket.SOCK_STREAM, socket.SOCK_DGRAM))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", port))
