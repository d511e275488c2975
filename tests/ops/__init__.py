"""Tests of `proxy.ops` through the admin listener over real HTTP: health, stats and metrics after real traffic,
the insights as tables, purge, warm, and the dashboard opened in headless Chromium."""
