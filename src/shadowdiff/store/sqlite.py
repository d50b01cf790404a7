"""Persistence of exchanges and counters behind one small interface (SQLite, the embedded default).

Writes come in batches from one thread of the worker; reads come from the faces (CLI, reports).
The schema carries a version: a store written by another version is refused with a clear
error, never read or migrated silently.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import orjson

from shadowdiff.errors import StoreError
from shadowdiff.model import (
    Divergence,
    Event,
    Exchange,
    Headers,
    Outcome,
    RequestSnapshot,
    apply_merge,
    result_of,
)

SCHEMA_VERSION = 3
MIGRATES_FROM = ("2",)
"""Older versions this one upgrades in place: version 3 only adds the events table."""

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
CREATE TABLE IF NOT EXISTS counts (
    run TEXT NOT NULL,
    instance TEXT NOT NULL,
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (run, instance, source, name)
);
CREATE TABLE IF NOT EXISTS events (
    run TEXT NOT NULL,
    instance TEXT NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    old_value TEXT NOT NULL,
    new_value TEXT NOT NULL
);
"""

SIDES = ("primary", "shadow", "secondary")
COLUMNS = (
    "run, instance, flow_id, ts, route, method, path, request_headers, request_body, "
    + ", ".join(f"{s}_status, {s}_error, {s}_latency, {s}_headers, {s}_body" for s in SIDES)
    + ", shadow_result, secondary_result"
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


def open_store(target: str, create: bool = True) -> Store:
    """The store a `--store` value names: a PostgreSQL URL (`postgresql://…`, for a fleet),
    or else a SQLite file. Both have one interface; tests/test_pgstore.py holds them to the
    same signatures and the same answers."""
    if target.startswith(("postgresql://", "postgres://")):
        from shadowdiff.store.postgres import PostgresStore  # psycopg is loaded only when asked for

        return cast(Store, PostgresStore(target, create))
    return Store(target, create)


def clean(text: str) -> str:
    """Text SQLite can store: a lone surrogate from a hostile body becomes its escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def headers_out(headers: Headers) -> bytes:
    return orjson.dumps([[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers])


def headers_in(blob: bytes | None) -> Headers:
    if not blob:
        return []
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in orjson.loads(blob)]


def side_row(outcome: Outcome | None) -> tuple[object, ...]:
    if outcome is None:
        return (None, None, None, None, None)
    return (
        outcome.status,
        outcome.error,
        outcome.latency,
        headers_out(outcome.headers),
        outcome.body,
    )


class Store:
    """A SQLite store; open it with `Store(path)`, close it with `close()`."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = str(path)
        if not create and not Path(self.path).exists():
            raise StoreError(f"{self.path}: no such store")
        try:
            self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.create_function("apply_merge", 3, apply_merge, deterministic=True)
            self._check_schema(create)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: not a readable shadowdiff store ({e})") from None

    def _check_schema(self, create: bool) -> None:
        tables = {
            r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "meta" not in tables:
            if tables or not create:
                raise StoreError(f"{self.path}: not a shadowdiff store")
            with self.db:
                self.db.executescript(SCHEMA)
                self.db.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            return
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = row[0] if row else "unknown"
        if version in MIGRATES_FROM:
            with self.db:  # every statement of the schema is idempotent
                self.db.executescript(SCHEMA)
                self.db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
                )
            return
        if version != str(SCHEMA_VERSION):
            raise StoreError(
                f"{self.path}: store schema version {version}, this shadowdiff reads version "
                f"{SCHEMA_VERSION}; use a matching shadowdiff or a new store path"
            )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(
        self,
        run: str,
        instance: str,
        exchanges: list[Exchange],
        counts: dict[str, dict[str, int]],
        merges: Iterable[tuple[str, str]] = (),
        examples: Iterable[tuple[str, str, int, str]] = (),
        events: Iterable[Event] = (),
    ) -> None:
        """Records a batch in one transaction: exchanges with their divergences, the latest
        cumulative counters, route merges (old prefix → new), example slots
        (route, path, slot, flow_id) pointing at exchanges of this instance, and events."""
        rows = [
            (
                run,
                instance,
                x.request.flow_id,
                x.request.timestamp,
                clean(x.route),
                clean(x.request.method),
                clean(x.request.path),
                headers_out(x.request.headers),
                x.request.body,
                *side_row(x.primary),
                *side_row(x.shadow),
                *side_row(x.secondary),
                result_of(x.shadow_diffs),
                result_of(x.secondary_diffs) if x.secondary else None,
            )
            for x in exchanges
        ]
        diffs = [
            (
                run,
                instance,
                x.request.flow_id,
                clean(x.route),
                side,
                clean(d.path),
                d.kind,
                clean(d.left),
                clean(d.right),
                d.rule,
            )
            for x in exchanges
            for side, listed in (("shadow", x.shadow_diffs), ("secondary", x.secondary_diffs))
            for d in listed
        ]
        marks = ", ".join("?" * (11 + 5 * len(SIDES)))
        with self.db:
            for old, new in merges:
                self._merge(run, old, new)
            self.db.executemany(f"INSERT INTO exchanges ({COLUMNS}) VALUES ({marks})", rows)
            self.db.executemany(
                "INSERT INTO divergences VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", diffs
            )
            self.db.executemany(
                "INSERT OR REPLACE INTO examples VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (run, clean(route), clean(path), slot, instance, flow)
                    for route, path, slot, flow in examples
                ],
            )
            self.db.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(run, instance, e.ts, e.kind, clean(e.actor), e.old, e.new) for e in events],
            )
            self.db.executemany(
                "INSERT INTO counts VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (run, instance, source, name) DO UPDATE SET value = excluded.value",
                [
                    (run, instance, source, name, value)
                    for source, named in counts.items()
                    for name, value in named.items()
                ],
            )

    def _merge(self, run: str, old: str, new: str) -> None:
        """Regroups what is stored under route prefix `old` as `new` (a collapsed segment)."""
        like = old.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
        for update in ("UPDATE exchanges", "UPDATE divergences", "UPDATE OR REPLACE examples"):
            self.db.execute(
                f"{update} SET route = apply_merge(route, ?, ?)"
                " WHERE run = ? AND (route = ? OR route LIKE ? ESCAPE '\\')",
                (old, new, run, old, like),
            )

    def runs(self) -> list[str]:
        rows = self.db.execute(
            "SELECT run FROM counts UNION SELECT DISTINCT run FROM exchanges ORDER BY run"
        )
        return [r[0] for r in rows]

    def counts(self, run: str) -> dict[str, int]:
        """Counters summed over instances and sources (tap and worker own disjoint names)."""
        rows = self.db.execute(
            "SELECT name, SUM(value) FROM counts WHERE run = ? GROUP BY name ORDER BY name", (run,)
        )
        return {name: int(value) for name, value in rows}

    def instance_counts(self, run: str) -> dict[str, dict[str, int]]:
        """Counters per instance (one proxy process, one tap object): each one's books must
        balance on their own; one that stopped without its last counts shows here."""
        rows = self.db.execute(
            "SELECT instance, name, SUM(value) FROM counts WHERE run = ?"
            " GROUP BY instance, name ORDER BY instance, name",
            (run,),
        )
        out: dict[str, dict[str, int]] = {}
        for instance, name, value in rows:
            out.setdefault(instance, {})[name] = int(value)
        return out

    def routes(self, run: str) -> dict[str, dict[str, int]]:
        """Per route: exchanges, with a secondary, and the shadow's matched / ignored /
        divergent counts (before noise is taken out)."""
        rows = self.db.execute(
            "SELECT route, COUNT(*), COUNT(secondary_result), SUM(shadow_result = 'matched'),"
            " SUM(shadow_result = 'ignored'), SUM(shadow_result = 'divergent')"
            " FROM exchanges WHERE run = ? GROUP BY route ORDER BY COUNT(*) DESC, route",
            (run,),
        )
        names = ("exchanges", "with_secondary", "matched", "ignored", "divergent")
        return {route: dict(zip(names, map(int, rest), strict=True)) for route, *rest in rows}

    def outcome_rows(
        self, run: str
    ) -> Iterator[
        tuple[
            str,
            int | None,
            str | None,
            float | None,
            int | None,
            str | None,
            float | None,
            float | None,
        ]
    ]:
        """(route, primary status, primary error, primary latency, shadow status, shadow error,
        shadow latency, secondary latency) per exchange, in recording order."""
        yield from self.db.execute(
            # A failed side's time-to-failure is no latency: NULL, so it never skews a check.
            "SELECT route, primary_status, primary_error,"
            " CASE WHEN primary_error IS NULL THEN primary_latency END, shadow_status,"
            " shadow_error, CASE WHEN shadow_error IS NULL THEN shadow_latency END,"
            " CASE WHEN secondary_error IS NULL THEN secondary_latency END"
            " FROM exchanges WHERE run = ? ORDER BY id",
            (run,),
        )

    def divergence_rows(
        self, run: str
    ) -> Iterator[tuple[str, str, str, str, str, str | None, str, str]]:
        """(route, side, exchange key, path, kind, rule, left, right) for every divergence."""
        rows = self.db.execute(
            "SELECT route, side, instance || ' ' || flow_id, path, kind, rule,"
            " left_value, right_value FROM divergences WHERE run = ?"
            " ORDER BY route, side, path, rowid",
            (run,),
        )
        yield from rows

    def events(self, run: str) -> list[Event]:
        """What operators (and the automatic kill switch) did during the run, oldest first."""
        rows = self.db.execute(
            "SELECT ts, kind, actor, old_value, new_value FROM events WHERE run = ?"
            " ORDER BY ts, rowid",
            (run,),
        )
        return [Event(*row) for row in rows]

    def recent_divergences(self, run: str, limit: int) -> list[tuple[str, str, str, str, str]]:
        """(route, path, kind, primary's value, shadow's value) of the latest real divergences
        of the shadow, newest first."""
        rows = self.db.execute(
            "SELECT route, path, kind, left_value, right_value FROM divergences"
            " WHERE run = ? AND side = 'shadow' AND rule IS NULL ORDER BY rowid DESC LIMIT ?",
            (run, limit),
        )
        return list(rows)

    def examples(self, run: str, route: str, path: str) -> list[Exchange]:
        """The sampled example exchanges kept for one (route, path)."""
        keys = self.db.execute(
            "SELECT instance, flow_id FROM examples WHERE run = ? AND route = ? AND path = ?"
            " ORDER BY slot",
            (run, route, path),
        ).fetchall()
        return [x for instance, flow in keys for x in self.exchanges(run, instance, flow)]

    def exchanges(
        self, run: str, instance: str | None = None, flow_id: str | None = None
    ) -> Iterator[Exchange]:
        """The run's exchanges in recording order (or the one of `instance` and `flow_id`)."""
        where, args = "run = ?", [run]
        if instance is not None and flow_id is not None:
            where += " AND instance = ? AND flow_id = ?"
            args += [instance, flow_id]
        diffs: dict[tuple[str, str], list[tuple[str, Divergence]]] = {}
        for row in self.db.execute(
            "SELECT instance, flow_id, side, path, kind, left_value, right_value, rule"
            f" FROM divergences WHERE {where} ORDER BY rowid",
            args,
        ):
            diffs.setdefault((row[0], row[1]), []).append((row[2], Divergence(*row[3:])))
        cursor = self.db.execute(f"SELECT {COLUMNS} FROM exchanges WHERE {where} ORDER BY id", args)
        for row in cursor:
            request = RequestSnapshot(
                flow_id=row[2],
                method=row[5],
                path=row[6],
                headers=headers_in(row[7]),
                body=row[8],
                timestamp=row[3],
            )
            sides = [outcome_of(row[9 + 5 * i : 14 + 5 * i]) for i in range(len(SIDES))]
            primary, shadow, secondary = sides
            assert primary is not None and shadow is not None
            found = diffs.get((row[1], row[2]), [])
            yield Exchange(
                request,
                primary,
                shadow,
                secondary,
                route=row[4],
                shadow_diffs=[d for side, d in found if side == "shadow"],
                secondary_diffs=[d for side, d in found if side == "secondary"],
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
