"""Byte tunnels: WebSocket after its 101, and raw TCP upstreams."""
