"""Tests of `proxy.devtools`: the sample A1Betting backend over real HTTP, the load generator, the benchmark's
report and chart, and `sidecache demo` as a user runs it."""
