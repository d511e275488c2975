"""Generic building blocks that know nothing of HTTP or Redis: single flight (coalescer), windowed batching
(batcher) and a clock-driven circuit breaker."""
