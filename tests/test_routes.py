"""Route templates from paths."""

from __future__ import annotations

import pytest

from shadowdiff.routes import route_of, template


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/users/42", "/users/{id}"),
        ("/users/42/orders?x=1", "/users/{id}/orders"),
        ("/o/123e4567-e89b-12d3-a456-426614174000", "/o/{id}"),
        ("/blob/0123456789abcdef0123", "/blob/{id}"),
        ("/t/AbCdEfGhIjKlMnOpQr5tUv", "/t/{id}"),
        ("/search", "/search"),
        ("/very-long-but-plain-words-here", "/very-long-but-plain-words-here"),
        ("/", "/"),
    ],
)
def test_template(path, expected):
    assert template(path) == expected


def test_route_has_method():
    assert route_of("GET", "/users/7") == "GET /users/{id}"
