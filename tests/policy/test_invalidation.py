"""What an unsafe request invalidates (RFC 9111 4.4), as tables."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.policy.invalidation import invalidated_targets, invalidates, origin_of

ORIGINS = {origin_of("http://127.0.0.1:8080"): "", origin_of("http://10.0.0.5:8000/api"): "/api"}


@pytest.mark.parametrize(
    ("method", "status", "expected"),
    [
        ("POST", 200, True), ("PUT", 204, True), ("DELETE", 302, True), ("PATCH", 201, True),
        ("M-SEARCH", 200, True), ("PROPPATCH", 207, True), ("purge", 200, True),  # safety unknown: unsafe
        ("POST", 400, False), ("POST", 500, False), ("POST", 101, False),  # errors (and 1xx) change nothing
        ("GET", 200, False), ("HEAD", 200, False), ("OPTIONS", 200, False), ("TRACE", 200, False),
    ],
)
def test_invalidates(method: str, status: int, expected: bool) -> None:
    assert invalidates(method, status) is expected


@pytest.mark.parametrize(
    ("target", "response", "expected"),
    [
        ("/a/b?x=1", {}, ["/a/b?x=1"]),
        ("/a/b", {"Location": "c?y=2"}, ["/a/b", "/a/c?y=2"]),  # relative: resolved against the target
        ("/a/b", {"Location": "/z", "Content-Location": "/q"}, ["/a/b", "/z", "/q"]),
        ("/a/b", {"Content-Location": "http://127.0.0.1:8080/d"}, ["/a/b", "/d"]),  # the proxy's own origin
        ("/a/b", {"Location": "HTTP://127.0.0.1:8080/d"}, ["/a/b", "/d"]),
        ("/a/b", {"Location": "http://10.0.0.5:8000/api/e"}, ["/a/b", "/e"]),  # the upstream's, prefix removed
        ("/a/b", {"Location": "http://10.0.0.5:8000/other"}, ["/a/b"]),  # outside the upstream's prefix
        ("/a/b", {"Location": "http://example.com/z"}, ["/a/b"]),  # another origin: never
        ("/a/b", {"Location": "https://127.0.0.1:8080/z"}, ["/a/b"]),  # another scheme is another origin
        ("/a/b", {"Location": "http://127.0.0.1:8081/z"}, ["/a/b"]),
        ("/a/b", {"Location": "/a/b"}, ["/a/b"]),
    ],
)
def test_invalidated_targets(target: str, response: dict[str, str], expected: list[str]) -> None:
    assert invalidated_targets(target, CIMultiDict(response), ORIGINS) == expected


def test_origin_of_a_malformed_host_is_empty() -> None:
    assert origin_of("http://a b:x") == ""
