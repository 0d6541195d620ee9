"""The ingress gateway's mechanisms: routes on normalised paths, authentication (JWT, API
keys), rate limits, a response cache and compression, each a layer behind the one contract."""
