"""The sidecar application: config, listeners, admin API, lifecycle and the `mesh` CLI."""
