"""The mesh's mechanisms: HTTP/1 codec, layers, policies, balancing, identity, telemetry.

Nothing in here reads config files or starts processes; `sidecar` assembles these parts.
"""
