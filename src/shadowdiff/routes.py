"""The route an exchange belongs to: method and path template (`GET /users/{id}`).

For now segments that look like identifiers collapse to `{id}`: integers, UUIDs, long hex
hashes and long opaque tokens. The query string is never part of a route.
"""

from __future__ import annotations

import re

_ID = re.compile(
    r"^(?:[0-9]+"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,}"
    r"|(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{20,})$"
)


def template(path: str) -> str:
    """`/users/42/orders?x=1` → `/users/{id}/orders`."""
    bare = path.partition("?")[0]
    return "/".join("{id}" if _ID.match(segment) else segment for segment in bare.split("/"))


def route_of(method: str, path: str) -> str:
    return f"{method} {template(path)}"
