"""The admin listener: health, stats, metrics, the dashboard, rules, purge and warm, written against a narrow
view of the running proxy."""
