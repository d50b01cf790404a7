"""The route an exchange belongs to: method and path template (`GET /users/{id}`).

Configured templates win. Otherwise segments that look like identifiers (integers, UUIDs,
long hex hashes, long opaque tokens) collapse to `{id}`, and so does any segment position that
shows more than `collapse_after` distinct values behind the same prefix (`/users/alice`,
`/users/bob`, ...). Routes that existed before such a collapse are reported as merges, so the
store can regroup what it already holds. Past `max` routes, new ones go to `other`, and the
values learned for collapsing are capped too (`LEARNED_PER_ROUTE`): memory stays bounded
whatever the traffic. The query string is never part of a route.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from shadowdiff.config import Routes

OTHER = "other"

LEARNED_PER_ROUTE = 20
"""Path segments (a value seen behind a prefix, or a collapsed prefix) the table holds to learn
collapses, per route of `routes.max`: normal traffic holds a few per route; a crawler of
ever-new paths stops being learned from there (its paths still get a route, or `other`)."""

_ID = re.compile(
    r"^(?:[0-9]+"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,}"
    r"|(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{20,})$"
)
_PLACEHOLDER = re.compile(r"\{[^/{}]+\}")


def looks_like_id(segment: str) -> bool:
    return bool(_ID.match(segment))


def _template_regex(template: str) -> tuple[str | None, re.Pattern[str], str]:
    """`GET /users/{id}` or `/orders/{order_id}/items` → (method or None, regex, path)."""
    method, _, path = template.strip().rpartition(" ")
    parts = _PLACEHOLDER.split(path)
    pattern = "[^/]+".join(re.escape(part) for part in parts)
    return (method.upper() or None), re.compile(pattern), path


class RouteTable:
    """Assigns routes to requests, learning from the traffic it sees; `on_merge` hears each
    merge as it happens (the metrics drop the merged routes' series)."""

    def __init__(self, cfg: Routes) -> None:
        self.templates = [_template_regex(t) for t in cfg.templates]
        self.max = cfg.max
        self.collapse_after = cfg.collapse_after
        self.seen: dict[tuple[str, str], set[str]] = {}
        self.collapsed: set[tuple[str, str]] = set()
        self.held = 0  # values in `seen` and keys in `collapsed`: at most `learning`
        self.learning = cfg.max * LEARNED_PER_ROUTE
        self.routes: set[str] = set()
        self.merges: list[tuple[str, str]] = []
        self.on_merge: Callable[[str, str], None] = lambda old, new: None

    def route(self, method: str, path: str) -> str:
        bare = path.partition("?")[0]
        for wanted, regex, template in self.templates:
            if (wanted is None or wanted == method) and regex.fullmatch(bare):
                return f"{method} {template}"
        prefix = ""
        for index, segment in enumerate(bare.split("/")):
            if index:
                prefix += "/"
            prefix += self._segment(method, prefix, segment)
        route = f"{method} {prefix}"
        if route not in self.routes:
            if len(self.routes) >= self.max:
                return OTHER
            self.routes.add(route)
        return route

    def _segment(self, method: str, prefix: str, segment: str) -> str:
        if not segment:
            return ""
        if looks_like_id(segment):
            return "{id}"
        key = (method, prefix)
        if key in self.collapsed:
            return "{id}"
        values = self.seen.get(key)
        if values is not None and segment in values:
            return segment
        if self.held >= self.learning:  # learning is full: answered, not learned
            return segment
        if values is None:
            values = self.seen[key] = set()
        values.add(segment)
        self.held += 1
        if len(values) <= self.collapse_after:
            return segment
        self.collapsed.add(key)
        del self.seen[key]
        self.held += 1 - len(values)
        self._forget_under(method, prefix, values - {"{id}"})
        for value in values - {segment}:
            merge = (f"{method} {prefix}{value}", f"{method} {prefix}{{id}}")
            self.merges.append(merge)
            self.on_merge(*merge)
        self.routes = {r for r in self.routes if not _under(r, f"{method} {prefix}", values)}
        return "{id}"

    def _forget_under(self, method: str, prefix: str, values: set[str]) -> None:
        """Drops what was learned behind the values of a prefix that just collapsed: no path
        reaches it again (they all pass through `{id}` there)."""
        stale = tuple(f"{prefix}{value}/" for value in values)
        for key in [k for k in self.seen if k[0] == method and k[1].startswith(stale)]:
            self.held -= len(self.seen.pop(key))
        gone = {k for k in self.collapsed if k[0] == method and k[1].startswith(stale)}
        self.collapsed -= gone
        self.held -= len(gone)

    def take_merges(self) -> list[tuple[str, str]]:
        """Route prefixes that collapsed since the last call: (old prefix, new prefix)."""
        merges, self.merges = self.merges, []
        return merges


def _under(route: str, prefix: str, values: set[str]) -> bool:
    rest = route.removeprefix(prefix)
    return rest != route and rest.split("/", 1)[0] in values
