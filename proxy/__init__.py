"""sidecache: a caching reverse-proxy sidecar."""

__version__ = "0.1.0"
