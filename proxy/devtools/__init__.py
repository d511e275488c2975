"""The demo, the benchmark, its load generator and chart, and the sample A1Betting-shaped backend.
`sidecache serve` never imports these."""
