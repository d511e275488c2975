"""Tests of `proxy.policy`: the pure caching decisions as tables (keys, Cache-Control, freshness, the origin's
policy, validators, ranges, dates, encodings): no server, no event loop, numbers and headers in, a verdict out."""
