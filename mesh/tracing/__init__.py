"""Distributed tracing: context propagation, sampling, span records and their export.

The request path does as little as possible: it parses the incoming context by hand
(`propagation`), decides sampling from the trace id (`sampling`), writes the outgoing
headers, and, only for a sampled request, appends one small tuple to a bounded queue
(`recorder`). A background thread turns those tuples into OpenTelemetry spans and exports
them (`export`): OTLP over HTTP/protobuf or gRPC, or a local JSON-lines span file that
`mesh traces` reads (`spanfile`). An unsampled request creates no span object at all.
"""
