"""The store's schema and its row codecs, shared by both backends (a leaf: model and errors only).

The schema is written in SQLite's dialect; the PostgreSQL backend translates it. It carries a
version: a store written by another version is refused with a clear error, never read or
migrated silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from shadowdiff.errors import StoreError
from shadowdiff.model import (
    COUNTED,
    WHOLE,
    Divergence,
    Exchange,
    Headers,
    Outcome,
    RequestSnapshot,
    result_of,
)

SCHEMA_VERSION = 6
MIGRATES_FROM = ("2", "3", "4", "5")
"""Older versions this one upgrades in place: version 3 added the events table, version 4 the
aggregates (`route_stats`, `route_statuses`, `path_stats`, `signatures`, `latency_sample`),
computed from the stored exchanges and divergences (`aggregates.migrate`), version 5 the
incidents and proxies tables (created empty) and the `exchanges_route_ts` index, version 6
the releases table (created empty)."""
WITHOUT_AGGREGATES = ("2", "3")
"""The versions whose aggregates a migration computes."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS exchanges (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    instance TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    ts REAL NOT NULL,
    route TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    request_headers BLOB NOT NULL,
    request_body BLOB NOT NULL,
    primary_status INTEGER, primary_error TEXT, primary_latency REAL,
    primary_headers BLOB, primary_body BLOB,
    shadow_status INTEGER, shadow_error TEXT, shadow_latency REAL,
    shadow_headers BLOB, shadow_body BLOB,
    secondary_status INTEGER, secondary_error TEXT, secondary_latency REAL,
    secondary_headers BLOB, secondary_body BLOB,
    shadow_result TEXT NOT NULL,
    secondary_result TEXT
);
CREATE INDEX IF NOT EXISTS exchanges_run_route ON exchanges (run, route);
CREATE INDEX IF NOT EXISTS exchanges_flow ON exchanges (run, instance, flow_id);
CREATE INDEX IF NOT EXISTS exchanges_route_ts ON exchanges (run, route, ts);
CREATE TABLE IF NOT EXISTS divergences (
    run TEXT NOT NULL,
    instance TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    route TEXT NOT NULL,
    side TEXT NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    left_value TEXT NOT NULL,
    right_value TEXT NOT NULL,
    rule TEXT
);
CREATE INDEX IF NOT EXISTS divergences_run_route ON divergences (run, route, side, path);
CREATE INDEX IF NOT EXISTS divergences_flow ON divergences (run, instance, flow_id);
CREATE TABLE IF NOT EXISTS examples (
    run TEXT NOT NULL,
    route TEXT NOT NULL,
    path TEXT NOT NULL,
    slot INTEGER NOT NULL,
    instance TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    PRIMARY KEY (run, route, path, slot)
);
CREATE INDEX IF NOT EXISTS examples_flow ON examples (run, instance, flow_id);
CREATE TABLE IF NOT EXISTS counts (
    run TEXT NOT NULL,
    instance TEXT NOT NULL,
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (run, instance, source, name)
);
CREATE TABLE IF NOT EXISTS route_stats (
    run TEXT NOT NULL,
    instance TEXT NOT NULL,
    route TEXT NOT NULL,
    exchanges INTEGER NOT NULL,
    with_secondary INTEGER NOT NULL,
    matched INTEGER NOT NULL,
    ignored INTEGER NOT NULL,
    divergent INTEGER NOT NULL,
    primary_errors INTEGER NOT NULL,
    shadow_errors INTEGER NOT NULL,
    PRIMARY KEY (run, instance, route)
);
CREATE TABLE IF NOT EXISTS route_statuses (
    run TEXT NOT NULL,
    instance TEXT NOT NULL,
    route TEXT NOT NULL,
    primary_side TEXT NOT NULL,
    shadow_side TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (run, instance, route, primary_side, shadow_side)
);
CREATE TABLE IF NOT EXISTS path_stats (
    run TEXT NOT NULL,
    instance TEXT NOT NULL,
    route TEXT NOT NULL,
    side TEXT NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (run, instance, route, side, path, kind)
);
CREATE TABLE IF NOT EXISTS signatures (
    run TEXT NOT NULL,
    instance TEXT NOT NULL,
    route TEXT NOT NULL,
    digest TEXT NOT NULL,
    paths TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (run, instance, route, digest)
);
CREATE TABLE IF NOT EXISTS latency_sample (
    run TEXT NOT NULL,
    route TEXT NOT NULL,
    priority REAL NOT NULL,
    ts REAL NOT NULL,
    primary_latency REAL,
    shadow_latency REAL,
    secondary_latency REAL
);
CREATE INDEX IF NOT EXISTS latency_sample_route ON latency_sample (run, route, priority);
CREATE TABLE IF NOT EXISTS events (
    run TEXT NOT NULL,
    instance TEXT NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    old_value TEXT NOT NULL,
    new_value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS incidents (
    run TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    route TEXT NOT NULL,
    check_id TEXT NOT NULL,
    team TEXT NOT NULL,
    severity TEXT NOT NULL,
    summary TEXT NOT NULL,
    started REAL NOT NULL,
    opened REAL NOT NULL,
    alerted REAL, acked REAL, acked_by TEXT, mitigated REAL, mitigated_by TEXT,
    resolved REAL, resolved_why TEXT,
    PRIMARY KEY (run, key, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_open ON incidents (run, key) WHERE resolved IS NULL;
CREATE TABLE IF NOT EXISTS proxies (
    run TEXT NOT NULL,
    instance TEXT NOT NULL,
    seen REAL NOT NULL,
    stopped REAL,
    stopped_why TEXT,
    PRIMARY KEY (run, instance)
);
CREATE TABLE IF NOT EXISTS releases (
    run TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    stage INTEGER NOT NULL,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    base INTEGER NOT NULL,
    actor TEXT NOT NULL,
    why TEXT NOT NULL
);
"""


def _tables(ddl: str) -> dict[str, frozenset[str]]:
    """Each table the schema creates, with its columns (a constraint such as `PRIMARY KEY
    (a, b)` names none): read from the schema's own text, so that what a store is checked
    for can never drift from what it is created with."""
    tables = {}
    for name, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\);", ddl, re.S):
        body = re.sub(r"PRIMARY KEY \([^)]*\)", "", body)
        tables[name] = frozenset(part.split()[0] for part in body.split(",") if part.strip())
    return tables


TABLES = _tables(SCHEMA)
"""Table → columns of this version: a store whose meta claims it has them all, or is refused
(a half-created or hand-made store would fail every write, retried forever)."""

SIDES = ("primary", "shadow", "secondary")
COLUMNS = (
    "run, instance, flow_id, ts, route, method, path, request_headers, request_body, "
    + ", ".join(f"{s}_status, {s}_error, {s}_latency, {s}_headers, {s}_body" for s in SIDES)
    + ", shadow_result, secondary_result"
)


def must_migrate(path: str, version: str) -> bool:
    """Whether the store at `path`, found at schema `version`, is upgraded in place (a version
    of MIGRATES_FROM) rather than used as it is (this version); any other is refused."""
    if version in MIGRATES_FROM:
        return True
    if version != str(SCHEMA_VERSION):
        raise StoreError(
            f"{path}: store schema version {version}, this shadowdiff reads version "
            f"{SCHEMA_VERSION}; use a matching shadowdiff or a new store path"
        )
    return False


def check_complete(path: str, columns_found: Iterable[tuple[str, str]]) -> None:
    """Refuses a store at schema SCHEMA_VERSION whose tables (`columns_found`: the (table,
    column) pairs its database lists) lack one of TABLES or of their columns."""
    found: dict[str, set[str]] = {}
    for table, column in columns_found:
        found.setdefault(table, set()).add(column)
    for table, columns in TABLES.items():
        if table not in found:
            missing = f"table {table}"
        elif columns - found[table]:
            missing = f"column {table}.{min(columns - found[table])}"
        else:
            continue
        raise StoreError(
            f"{path}: not a complete shadowdiff store (schema version {SCHEMA_VERSION}"
            f" without {missing}); use a new store path"
        )


def masked(target: str) -> str:
    """A store target fit to print: a URL's password (in the authority or the query) as ***."""
    parts = urlsplit(target)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{hosts}"
    query = "&".join(
        "password=***" if item.partition("=")[0] == "password" else item
        for item in parts.query.split("&")
        if item
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def clean(text: str) -> str:
    """Text SQLite can store: a lone surrogate from a hostile body becomes its escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def like_prefix(prefix: str) -> str:
    """LIKE pattern (with ESCAPE '\\') of the routes under `prefix` (`prefix/...`)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"


def headers_out(headers: Headers) -> bytes:
    return orjson.dumps([[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers])


def headers_in(blob: bytes | None) -> Headers:
    if not blob:
        return []
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in orjson.loads(blob)]


def side_row(outcome: Outcome | None, whole: bool = True) -> tuple[object, ...]:
    """One side's columns; without its headers and body unless `whole`."""
    if outcome is None:
        return (None, None, None, None, None)
    return (
        outcome.status,
        outcome.error,
        outcome.latency,
        headers_out(outcome.headers) if whole else None,
        outcome.body if whole else None,
    )


def outcome_of(cols: tuple[object, ...]) -> Outcome | None:
    status, error, latency, headers, body = cols
    if status is None and error is None:
        return None
    return Outcome(
        status=status,  # type: ignore[arg-type]
        headers=headers_in(headers),  # type: ignore[arg-type]
        body=body or b"",  # type: ignore[arg-type]
        latency=latency,  # type: ignore[arg-type]
        error=error,  # type: ignore[arg-type]
    )


def exchange_row(
    run: str,
    instance: str,
    x: Exchange,
    key: Callable[[str], str],
    text: Callable[[str], str],
) -> tuple[object, ...]:
    """An exchange as its row of `COLUMNS`: `key` prepares the route and `text` the method
    and path, as the backend stores them. A ROW exchange goes without headers and bodies."""
    whole = x.kept == WHOLE
    return (
        run,
        instance,
        x.request.flow_id,
        x.request.timestamp,
        key(x.route),
        text(x.request.method),
        text(x.request.path),
        headers_out(x.request.headers if whole else []),
        x.request.body if whole else b"",
        *side_row(x.primary, whole),
        *side_row(x.shadow, whole),
        *side_row(x.secondary, whole),
        result_of(x.shadow_diffs),
        result_of(x.secondary_diffs) if x.secondary else None,
    )


def stored(exchanges: list[Exchange]) -> list[Exchange]:
    """The exchanges that keep a row (the others live on in the aggregates alone)."""
    return [x for x in exchanges if x.kept != COUNTED]


def divergence_rows(
    run: str,
    instance: str,
    exchanges: list[Exchange],
    key: Callable[[str], str],
    text: Callable[[str], str],
) -> list[tuple[object, ...]]:
    """The exchanges' divergences as rows of the divergences table (run, instance, flow_id,
    route, side, path, kind, left_value, right_value, rule): `key` prepares the route and
    the path, `text` the two values."""
    return [
        (
            run,
            instance,
            x.request.flow_id,
            key(x.route),
            side,
            key(d.path),
            d.kind,
            text(d.left),
            text(d.right),
            d.rule,
        )
        for x in stored(exchanges)
        for side, listed in (("shadow", x.shadow_diffs), ("secondary", x.secondary_diffs))
        for d in listed
    ]


def exchange_of(row: tuple[Any, ...], found: list[tuple[str, Divergence]]) -> Exchange:
    """An exchange from its row of `COLUMNS` and its (side, divergence) list."""
    request = RequestSnapshot(
        flow_id=row[2],
        method=row[5],
        path=row[6],
        headers=headers_in(row[7]),
        body=row[8],
        timestamp=row[3],
    )
    primary, shadow, secondary = (
        outcome_of(row[9 + 5 * i : 14 + 5 * i]) for i in range(len(SIDES))
    )
    assert primary is not None and shadow is not None
    return Exchange(
        request,
        primary,
        shadow,
        secondary,
        route=row[4],
        shadow_diffs=[d for side, d in found if side == "shadow"],
        secondary_diffs=[d for side, d in found if side == "secondary"],
    )
