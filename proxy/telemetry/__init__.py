"""Written on the hot path, read by ops: Prometheus metrics, the access log, and the per-worker snapshots
that let worker 0 answer for all."""
