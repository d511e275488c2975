"""Tests of `proxy.cache.redis` against real redis-servers the tests start on free loopback ports: the tier
through proxies, several `sidecache serve` processes sharing one Redis, Redis failing and coming back, and a real
Cluster and Sentinel set (each started once per module)."""
