"""The route an exchange belongs to: method and path template (`GET /users/{id}`).

Configured templates win. Otherwise each segment is read for its shape, as APM tools name
endpoints from raw URLs (Datadog's `http.endpoint`, OpenTelemetry's `url.template`):

| segment | becomes |
|---|---|
| `42`, `42-hello-world`, `cus_NffrFeUfNV2Hib`, a long random token | `{id}` |
| hex shorter than 16 with a letter (`6dcb09b`) | `{id}`: all digits by chance, it would be one |
| `123e4567-e89b-12d3-a456-426614174000` | `{uuid}` |
| hex of 16 or more (`6dcb09b5b578...`) | `{hash}` |
| `2024-05-01`, `2024-05-01T12:00:00Z` | `{date}` |
| `/2024/05/01`, `/2024/05` (a year, then a month and a day, zero-padded) | `/{yyyy}/{mm}/{dd}` |
| `4.17.21`, `v1.2.3-rc.1` (three numbers) | `{version}` |
| in a name: `app.3f2a9c1b`, `lodash-4.17.21`, `db-2024-05-01` | `app.{hash}`, `db-{date}`, ... |

A known file extension (`EXTENSIONS`) stays out of that reading and is kept: `/customers/42.json`
is `/customers/{id}.json`, apart from `/customers/{id}`. Dates stay segment by segment: a day,
a month and a year archive are three endpoints, and a prefix learned behind them stays one
segment long. Version prefixes (`/v2`, `/1.1`, Shopify's `/2024-01`) and words stay literal.

What is still literal is learned: a segment position that shows more than `collapse_after`
distinct names behind the same prefix (`/users/alice`, `/users/bob`, ...) collapses to `{id}`,
each extension kept (`/products/{id}` and `/products/{id}.json`), so a collapse never merges two
extensions. Routes that existed before a collapse are reported as merges, so the store can
regroup what it already holds. Past `max` routes, new ones go to `other`, and the values
learned for collapsing are capped too (`LEARNED_PER_ROUTE`): memory stays bounded whatever the
traffic. The query string is never part of a route.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import pairwise

from shadowdiff.config import Routes

OTHER = "other"

LEARNED_PER_ROUTE = 20
"""Path segments (a name and extension seen behind a prefix, or a collapsed prefix) the table
holds to learn collapses, per route of `routes.max`: normal traffic holds a few per route; a
crawler of ever-new paths stops being learned from there (its paths still get a route, or
`other`)."""

LEARNED_CHARS = 256
"""Characters of method, prefix and name together past which a segment is answered, not
learned: what the table holds stays bounded in bytes too, however long a path (a position
that deep stays literal)."""

_EXTENSION_WORDS = """
    json jsonld xml html htm xhtml txt csv tsv rss atom ics yaml yml md pdf rtf epub
    js mjs cjs ts css map wasm php asp aspx jsp cgi
    png jpg jpeg gif svg webp avif ico bmp tif tiff heic
    woff woff2 ttf otf eot mp3 mp4 m4a m4v m3u8 webm ogg wav mov
    zip gz tgz tar bz2 xz zst 7z rar jar whl gem deb rpm apk dmg exe msi
    doc docx xls xlsx ppt pptx odt ods sig asc sha256 sha512 md5 pem crt log sql"""
EXTENSIONS = frozenset(_EXTENSION_WORDS.split())
"""File extensions (compared without case) a route keeps apart from the name before them. A
vocabulary rather than `mimetypes`, whose table changes between Python versions, and a route
must be the same string under both; a name's other dots stay in it (`/users/john.doe`)."""

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_COLON = r"(?::|%3[aA])"
_DATE = (
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    rf"(?:[T_ -][0-9]{{2}}(?:{_COLON}|-)?[0-9]{{2}}(?:(?:{_COLON}|-)?[0-9]{{2}})?(?:\.[0-9]+)?"
    rf"(?:Z|[+-][0-9]{{2}}{_COLON}?[0-9]{{2}})?)?"
)
_VERSION = r"v?[0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z]+(?:\.[0-9]+)*)?"
_HEX = r"(?=[a-f]*[0-9])[0-9a-f]{%d,}|(?=[A-F]*[0-9])[0-9A-F]{%d,}"

_WHOLE = re.compile(
    r"(?P<id>[0-9]+)"
    rf"|(?P<uuid>{_UUID})"
    rf"|(?P<date>{_DATE})"
    rf"|(?P<version>{_VERSION})"
    rf"|(?P<hash>{_HEX % (16, 16)})"
    rf"|(?P<id_hex>{_HEX % (7, 7)})"
    r"|(?P<id_stripe>[a-z]{2,8}_(?=[a-z]*[A-Z0-9])[A-Za-z0-9]{10,})"
    r"|(?P<id_slug>[0-9]+[-_](?=[0-9_-]*(?:[^\W\d_]|%))(?s:.*))"
)
"""Whole names, the first alternative that matches naming the placeholder (`id_hex` is
`{id}`): all digits is a number before it could be a hash; a number then a slug with a
letter is an id (`42-hello-world`, not Shopify's API version `2024-01`)."""

_MAYBE = re.compile(r"[0-9A-Z]")
"""A digit or a capital, which every shape holds (a UUID too: its version is a digit): a
name without one is literal at once, as most are."""

_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,}")
_DIGITS = re.compile(r"[0-9]+")

_INSIDE = re.compile(
    r"(?<![^.:@_-])"
    rf"(?:(?P<uuid>{_UUID})|(?P<date>{_DATE})|(?P<version>{_VERSION})|(?P<hash>{_HEX % (8, 8)}))"
    r"(?![^.:_-])"
)
"""Values inside a name, between separators (`app.3f2a9c1b`, `sha256:6dcb...`): hex of 8 or
more is a hash even all in digits, as a build's content hash sometimes is (1 time in 43)."""

_YEAR = re.compile(r"(?:19|20)[0-9]{2}")
_MONTH = re.compile(r"0[1-9]|1[0-2]")
_DAY = re.compile(r"0[1-9]|[12][0-9]|3[01]")

Shape = tuple[str, str, bool]
"""A segment read: name (with the placeholders found in it), extension, and whether the name
is a placeholder as a whole (then it is never learned from)."""


def _random(token: str) -> bool:
    """A long token that looks drawn at random (a nanoid, a ULID) rather than written
    (`getAccountBalancesV2`, `top-10-tips-for-better-sleep`): its characters change kind
    (digit, lower, upper, separator) at one pair in two, or it holds three runs of digits
    and no separator. Names written by people stay literal, to be learned."""
    if not _TOKEN.fullmatch(token):
        return False
    runs = len(_DIGITS.findall(token))
    if not runs:
        return False
    if runs >= 3 and "-" not in token and "_" not in token:
        return True
    changes = sum(_kind(a) != _kind(b) for a, b in pairwise(token))
    return 2 * changes >= len(token) - 1


def _mixed(text: str) -> bool:
    """Characters that change kind at one pair in three or more, as drawn at random
    (`NffrFeUfNV2Hib`, 10 changes in 13), never as written in camel case (`userProfile`, 2 in
    10), so `/rpc/get_userProfile` stays an endpoint of its own."""
    return 3 * sum(_kind(a) != _kind(b) for a, b in pairwise(text)) >= len(text) - 1


def _kind(char: str) -> int:
    return 0 if char.isdigit() else 1 if char.islower() else 2 if char.isupper() else 3


def _placeholder(match: re.Match[str]) -> str:
    return "{" + str(match.lastgroup).partition("_")[0] + "}"


def shape(segment: str) -> Shape:
    """One path segment read for what it is, out of any context."""
    name, dot, extension = segment.rpartition(".")
    if not (dot and name and extension.lower() in EXTENSIONS):
        name, extension = segment, ""
    else:
        extension = "." + extension
    if not _MAYBE.search(name):
        return name, extension, False
    whole = _WHOLE.fullmatch(name)
    if whole and (whole.lastgroup != "id_stripe" or _mixed(name.partition("_")[2])):
        return _placeholder(whole), extension, True
    found = _INSIDE.sub(_placeholder, name)
    if found == name and _random(name):
        return "{id}", extension, True
    return found, extension, False


def shapes(segments: list[str]) -> list[Shape]:
    """The segments of a path read, a date spread over segments (`/2024/05/01`) included."""
    read = [shape(segment) for segment in segments]
    for i in range(len(segments) - 1):
        if _YEAR.fullmatch(segments[i]) and _MONTH.fullmatch(segments[i + 1]):
            read[i], read[i + 1] = ("{yyyy}", "", True), ("{mm}", "", True)
            if i + 2 < len(segments) and _DAY.fullmatch(segments[i + 2]):
                read[i + 2] = ("{dd}", "", True)
    return read


_PLACEHOLDER = re.compile(r"\{[^/{}]+\}")


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
        self.seen: dict[tuple[str, str], dict[str, set[str]]] = {}
        """(method, prefix) → name → the extensions seen with it."""
        self.collapsed: set[tuple[str, str]] = set()
        self.held = 0  # (name, extension) pairs in `seen` and keys in `collapsed`: ≤ `learning`
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
        for index, read in enumerate(shapes(bare.split("/"))):
            if index:
                prefix += "/"
            prefix += self._segment(method, prefix, read)
        route = f"{method} {prefix}"
        if route not in self.routes:
            if len(self.routes) >= self.max:
                return OTHER
            self.routes.add(route)
        return route

    def _segment(self, method: str, prefix: str, read: Shape) -> str:
        name, extension, whole = read
        if whole or not name:
            return name + extension
        key = (method, prefix)
        if key in self.collapsed:
            return "{id}" + extension
        names = self.seen.get(key)
        if names is not None and extension in names.get(name, ()):
            return name + extension
        if self.held >= self.learning or len(method) + len(prefix) + len(name) > LEARNED_CHARS:
            return name + extension  # answered, not learned
        if names is None:
            names = self.seen[key] = {}
        names.setdefault(name, set()).add(extension)
        self.held += 1
        if len(names) > self.collapse_after:
            self._collapse(method, prefix, name + extension)
            return "{id}" + extension
        return name + extension

    def _collapse(self, method: str, prefix: str, latest: str) -> None:
        """Turns the position behind `prefix` into `{id}`, each extension kept, and announces
        the routes it merges (all but `latest`'s, which has none yet)."""
        key = (method, prefix)
        names = self.seen.pop(key)
        self.collapsed.add(key)
        learned = {name + ext: "{id}" + ext for name, exts in names.items() for ext in exts}
        self.held += 1 - len(learned)
        moved = {old: new for old, new in learned.items() if old != new}
        self._forget_under(method, prefix, moved)
        for old, new in moved.items():
            if old != latest:
                merge = (f"{method} {prefix}{old}", f"{method} {prefix}{new}")
                self.merges.append(merge)
                self.on_merge(*merge)
        self.routes = {r for r in self.routes if not _under(r, f"{method} {prefix}", moved)}

    def _forget_under(self, method: str, prefix: str, values: dict[str, str]) -> None:
        """Drops what was learned behind the values of a prefix that just collapsed: no path
        reaches it again (they all pass through `{id}` there)."""
        stale = tuple(f"{prefix}{value}/" for value in values)
        for key in [k for k in self.seen if k[0] == method and k[1].startswith(stale)]:
            self.held -= sum(map(len, self.seen.pop(key).values()))
        gone = {k for k in self.collapsed if k[0] == method and k[1].startswith(stale)}
        self.collapsed -= gone
        self.held -= len(gone)

    def take_merges(self) -> list[tuple[str, str]]:
        """Route prefixes that collapsed since the last call: (old prefix, new prefix)."""
        merges, self.merges = self.merges, []
        return merges


def _under(route: str, prefix: str, values: dict[str, str]) -> bool:
    rest = route.removeprefix(prefix)
    return rest != route and rest.split("/", 1)[0] in values
