"""What the tests share besides conftest's fixtures, one concept a module: the test origin (upstream), a client's
GET and bounded load (client), polling for background work (waiting), the processes we start and stop by PID
(processes: `sidecache` commands and servers, redis-servers, a Cluster, a Sentinel set), the Redis tests' rules and
key helpers (redis_tier), the batching tests' rule and backend (batching), a slow TCP relay (delay_proxy), headless
Chromium (browser) and the factory fixtures' types (factories). Test modules import from here, never from
another test module."""
