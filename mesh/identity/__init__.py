"""Service identity: SPIFFE IDs, a built-in CA, TLS contexts that rotate without restarts."""
