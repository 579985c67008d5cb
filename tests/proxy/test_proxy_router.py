"""The router's memo of matches: a repeated request gets the answer a fresh table gives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink.proxy import ProxyError, Route, Router
from interlink.proxy.auth import Identity

ROUTES = [
    Route(name="orders", path="/orders/{id}", target="orders", methods=frozenset({"GET"})),
    Route(name="api", path="/api", target="api", hosts=("api.example.com",)),
    Route(name="any", path="/", target="any"),
]


def _answer(router: Router[str], method: str, host: str, target: str) -> object:
    try:
        found = router.match(method, host, target, [])
    except ProxyError as error:
        return error.reason
    return (found.route.name, found.params, found.upstream_path)


@given(
    st.sampled_from(["GET", "POST"]),
    st.sampled_from(["", "api.example.com", "API.example.com:8080", "other"]),
    st.lists(st.sampled_from(["/orders/1", "/api/x?q=1", "/api", "/x/../api", "/%2f"]), max_size=6),
)
def test_repeated_matches_equal_fresh_ones(method: str, host: str, targets: list[str]) -> None:
    """Every answer of a router that has seen the requests before is a fresh router's."""
    seen = Router(ROUTES)
    for target in targets + targets:
        assert _answer(seen, method, host, target) == _answer(Router(ROUTES), method, host, target)


def test_header_routes_are_matched_every_time() -> None:
    """With a route that matches on headers, the same target can take another route."""
    router = Router(
        [
            Route(name="beta", path="/", target="beta", headers={"x-beta": "1"}),
            Route(name="main", path="/", target="main"),
        ]
    )
    assert router.match("GET", "h", "/x", [("x-beta", "1")]).route.name == "beta"
    assert router.match("GET", "h", "/x", []).route.name == "main"
    assert router.match("GET", "h", "/x", [("x-beta", "1")]).route.name == "beta"


def test_many_distinct_targets_still_match() -> None:
    """Past the memo's size, targets are still matched (the memo starts again)."""
    router = Router(ROUTES)
    for n in range(10_000):
        assert router.match("GET", "", f"/orders/{n}", []).params == {"id": str(n)}


def test_refusals_are_not_remembered() -> None:
    """A refused request is refused again, with the same reason."""
    router = Router(ROUTES[:1])
    for _ in range(2):
        with pytest.raises(ProxyError, match="not allowed"):
            router.match("POST", "", "/orders/1", [])
        with pytest.raises(ProxyError, match="encoded slash"):
            router.match("GET", "", "/orders/%2f", [])


def test_identity_header_lines_render_its_headers() -> None:
    """The rendered lines are the identity's headers, one ``name: value`` line each."""
    identity = Identity("jwt", "alice", frozenset({"b", "a"}), {})
    lines = identity.header_lines("x-auth-")
    assert lines == "x-auth-method: jwt\r\nx-auth-subject: alice\r\nx-auth-scopes: a b\r\n"
    assert identity.header_lines("x-auth-") is lines
    assert identity.header_lines("x-id-").startswith("x-id-method: jwt\r\n")
