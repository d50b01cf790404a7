"""Routes: identifiers collapse, configured templates win, busy positions collapse, a cap,
and what the table learns stays bounded."""

from __future__ import annotations

import random

import pytest

from shadowdiff.compare.routes import LEARNED_PER_ROUTE, OTHER, RouteTable
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


def test_learning_stays_bounded_whatever_the_paths():
    # the audit's crawler: 50 plain words per level, six levels, never enough to collapse
    words = [f"v{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(50)]
    table = RouteTable(Routes())
    rng = random.Random(1)
    for _ in range(20_000):
        table.route("GET", "/" + "/".join(rng.choice(words) for _ in range(6)))
    held = sum(map(len, table.seen.values())) + len(table.collapsed)
    assert held == table.held <= Routes().max * LEARNED_PER_ROUTE  # 80,980 values before
    assert len(table.routes) == Routes().max


def test_a_collapse_forgets_what_was_learned_behind_it():
    table = RouteTable(Routes(collapse_after=3))
    for name in ("alice", "bob", "carol"):
        for post in ("p", "q"):
            table.route("GET", f"/users/{name}/posts/{post}")
    assert ("GET", "/users/alice/posts/") in table.seen
    assert table.route("GET", "/users/dave/posts/p") == "GET /users/{id}/posts/p"
    assert not [key for key in table.seen if key[1].startswith("/users/") and "{id}" not in key[1]]
    assert table.held == sum(map(len, table.seen.values())) + len(table.collapsed)


def test_a_full_table_answers_without_learning():
    table = RouteTable(Routes(max=2))  # learns 2 * LEARNED_PER_ROUTE values at most
    assert table.route("GET", "/a") == "GET /a"
    for i in range(2 * LEARNED_PER_ROUTE + 5):
        table.route("GET", f"/w{i}/x")
    assert table.held == table.learning
    assert table.route("GET", "/a") == "GET /a"  # what it knows, it still answers
    assert table.route("GET", "/fresh/word") == OTHER
    assert ("GET", "/fresh/") not in table.seen
