"""Tests of `proxy.telemetry`: the access log, log throttling, the quantile sketch, worker snapshots, and
`--workers 2` as a real process whose one scrape shows the sum of both."""
