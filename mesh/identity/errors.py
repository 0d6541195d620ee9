"""Errors of identity set-up (not of requests: those are in mesh.errors)."""


class TlsConfigError(Exception):
    """Certificate, key or roots unusable; the message names the file and why."""
