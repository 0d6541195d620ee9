"""gRPC semantics on top of the HTTP/2 transport: status codes, deadlines, error shapes.

- `status`: the gRPC status codes, which of the proxy's error words and HTTP statuses map
  to which code, and which codes count as failures or may be retried;
- `timeout`: the `grpc-timeout` header, parsed into seconds and written back;
- `wire`: recognising a gRPC request or response and reading its `grpc-status`, and the
  trailers-only answer the proxy makes for its own failures.

All plain Python: nothing here runs for HTTP/1.1 traffic.
"""
