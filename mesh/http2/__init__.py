"""HTTP/2 transport (RFC 9113) on the `h2` library: server and client connections that carry
the same `Request`/`Response`/`Body` as HTTP/1.1 through the same layer stacks."""
