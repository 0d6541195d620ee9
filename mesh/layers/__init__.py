"""Layers: each one concern of the request path, behind the `Handler` contract."""
