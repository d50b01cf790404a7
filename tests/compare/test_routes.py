"""Routes: identifiers collapse, configured templates win, busy positions collapse, a cap."""

from __future__ import annotations

import pytest

from shadowdiff.compare.routes import OTHER, RouteTable
from shadowdiff.config import Routes
from shadowdiff.model import apply_merge


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/users/42", "GET /users/{id}"),
        ("/users/42/orders?x=1", "GET /users/{id}/orders"),
        ("/o/123e4567-e89b-12d3-a456-426614174000", "GET /o/{id}"),
        ("/blob/0123456789abcdef0123", "GET /blob/{id}"),
        ("/t/AbCdEfGhIjKlMnOpQr5tUv", "GET /t/{id}"),
        ("/search", "GET /search"),
        ("/very-long-but-plain-words-here", "GET /very-long-but-plain-words-here"),
        ("/", "GET /"),
        ("/users/", "GET /users/"),
    ],
)
def test_identifier_segments(path, expected):
    assert RouteTable(Routes()).route("GET", path) == expected


def test_configured_templates_win():
    table = RouteTable(Routes(templates=["GET /users/{name}", "/orders/{order_id}/items"]))
    assert table.route("GET", "/users/alice") == "GET /users/{name}"
    assert table.route("POST", "/orders/x1/items") == "POST /orders/{order_id}/items"
    assert table.route("DELETE", "/users/alice") == "DELETE /users/alice"


def test_busy_position_collapses_and_reports_merges():
    table = RouteTable(Routes(collapse_after=3))
    names = ["alice", "bob", "carol"]
    assert [table.route("GET", f"/users/{n}/posts") for n in names] == [
        f"GET /users/{n}/posts" for n in names
    ]
    assert table.route("GET", "/users/dave/posts") == "GET /users/{id}/posts"
    assert table.route("GET", "/users/erin") == "GET /users/{id}"
    assert sorted(table.take_merges()) == [
        ("GET /users/alice", "GET /users/{id}"),
        ("GET /users/bob", "GET /users/{id}"),
        ("GET /users/carol", "GET /users/{id}"),
    ]
    assert table.take_merges() == []
    assert table.route("GET", "/static/app.js") == "GET /static/app.js"  # other prefixes stay


def test_route_cap_sends_the_rest_to_other():
    table = RouteTable(Routes(max=3, collapse_after=1000))
    routes = [table.route("GET", f"/p{i}") for i in range(6)]
    assert routes[:3] == ["GET /p0", "GET /p1", "GET /p2"] and routes[3:] == [OTHER] * 3
    assert table.route("GET", "/p1") == "GET /p1"


def test_apply_merge_whole_segments_only():
    assert (
        apply_merge("GET /users/al/posts", "GET /users/al", "GET /users/{id}")
        == "GET /users/{id}/posts"
    )
    assert apply_merge("GET /users/alice", "GET /users/al", "GET /users/{id}") == "GET /users/alice"
