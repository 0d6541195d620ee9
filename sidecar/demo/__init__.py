"""The demo mesh: a small shop whose services each run behind their own sidecar."""
