"""Metrics: plain counters on the data path, read into Prometheus families at scrape time.

The data path never takes a lock nor calls prometheus_client: each observed stack counts in
ints and a fixed-bucket array (`requests.RequestStats`); `collector.SidecarCollector` reads
those, and the state the sidecar already keeps (clusters, listeners, pools, breakers,
certificates), when Prometheus scrapes.
"""
