"""The Redis tier's tests through a proxy run on both hit paths, fast lane and aiohttp (tests/support/lanes.py):
Redis going away, coming back and being shared must look the same to a client on either. The cluster and
sentinel modules, whose failovers are the slow part of the suite, pin the fast lane."""

from __future__ import annotations

from tests.support.lanes import lane, make_proxy  # noqa: F401 - fixtures, for every module of this folder
