"""`shadowdiff runs`: the runs a store holds, their size, and deleting old ones."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click

from shadowdiff.cli.common import STORE_PATH, UsageProblem, cli, options
from shadowdiff.store import RunSize, open_store


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    scaled = n / 1000
    for unit in ("KB", "MB"):
        if scaled < 1000:
            return f"{scaled:.1f} {unit}"
        scaled /= 1000
    return f"{scaled:.1f} GB"


def _line(r: RunSize) -> str:
    return (
        f"{r.run:<24} {r.exchanges:>12,} {r.rows:>10,} {r.whole:>8,} {_size(r.bytes):>10}"
        f"  {_when(r.first)} → {_when(r.last)}"
    )


@cli.command()
@options(STORE_PATH)
@click.option("--delete", "deleted", multiple=True, metavar="RUN", help="Delete this run.")
@click.option(
    "--older-than-days",
    "older_than",
    type=click.FloatRange(min=0.0, min_open=True),
    metavar="DAYS",
    help="Delete every run whose last exchange was sampled more than DAYS days ago.",
)
def runs(store_path: str, deleted: tuple[str, ...], older_than: float | None) -> None:
    """List the store's runs with what they hold; delete the ones named or too old."""
    with open_store(store_path, create=False) as store:
        listed = store.run_sizes()
        names = {r.run for r in listed}
        for name in deleted:
            if name not in names:
                raise UsageProblem(f"--delete: {store_path} holds no run named {name!r}")
        doomed = set(deleted)
        if older_than is not None:
            cut = time.time() - older_than * 86400
            doomed |= {r.run for r in listed if r.last is not None and r.last < cut}
        for name in sorted(doomed):
            store.delete_run(name)
            click.echo(f"deleted run {name!r}")
        kept = [r for r in listed if r.run not in doomed]
    if not kept:
        click.echo(f"{store_path}: no runs")
        return
    click.echo(
        f"{'run':<24} {'exchanges':>12} {'rows':>10} {'whole':>8} {'size':>10}  sampled (UTC)"
    )
    for r in kept:
        click.echo(_line(r))
