"""RELIABILITY.md section E (rows 30-36) against real sidecar processes and upstreams.

The iptables cases (REJECT, DROP) run in a throw-away network namespace
(tests/support/netns.py) and are skipped, with the reason, without root or `ip`/`iptables`.
"""
