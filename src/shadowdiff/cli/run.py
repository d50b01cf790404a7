"""The commands that send traffic and record it: `proxy`, `replay`, `demo`.

mitmproxy, the worker and the demo services load inside the commands, not at import.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import click

from shadowdiff.cli.common import (
    CONFIG,
    CONTROL,
    LISTEN,
    PRIMARY,
    RUN,
    SAMPLE,
    SECONDARY,
    SHADOW,
    STORE,
    STORE_PATH,
    UsageProblem,
    cli,
    configured,
    default,
    options,
    setup_logging,
)
from shadowdiff.cli.read import judge_run
from shadowdiff.config import access_token, destinations, parse_duration
from shadowdiff.counts import replaced, summary_line
from shadowdiff.errors import ConfigError
from shadowdiff.store import masked, open_store

_IN_FLIGHT = default("mirror.max_in_flight")
_TIMEOUT = default("mirror.timeout")


@cli.command()
@options(
    PRIMARY.but(help="URL of the service the proxy forwards to (its answer is live)."),
    SHADOW.but(help="URL of the candidate version that gets the copies."),
    SECONDARY,
    LISTEN,
    SAMPLE,
    STORE,
    RUN,
    CONTROL,
    CONFIG,
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Proxy processes (one per core) on ports --listen, --listen+1, … (and --control, "
    "--control+1, …), sharing the store and the run; put configs/nginx.conf in front.",
)
def proxy(config_path: str | None, processes: int, **flags: Any) -> None:
    """Run the reverse proxy in front of the primary, mirroring to the shadow."""
    shared = [
        f"--{name.removesuffix('_name')}={value}"
        for name, value in flags.items()
        if value is not None and name not in ("listen", "control")
    ] + ([f"--config={config_path}"] if config_path else [])
    flags["sampling.rate"] = flags.pop("sample")
    flags["run"] = flags.pop("run_name")
    flags["control.listen"] = flags.pop("control")
    cfg = configured(config_path, flags)
    try:
        access_token(cfg.control)
        destinations(cfg)
    except ConfigError as e:
        raise UsageProblem(str(e)) from None
    if cfg.primary is None:
        raise UsageProblem("--primary: required (or set `primary` in the config file)")
    setup_logging(cfg.log_level)
    open_store(cfg.store).close()  # refuse a bad store before taking traffic
    if processes > 1:
        from shadowdiff.live import fleet

        sys.exit(fleet.run(shared, cfg.listen, cfg.control.listen, processes))
    from shadowdiff.errors import StartupError
    from shadowdiff.live import serve

    try:
        tap = asyncio.run(serve(cfg))
    except StartupError as e:
        click.echo(f"shadowdiff: error: {e}", err=True)
        sys.exit(1)
    with open_store(cfg.store, create=False) as store:
        counts = store.counts(cfg.run)
        stored = store.instance_counts(cfg.run).get(tap.instance, {})
    note = ""
    if tap.final is None:
        missing = tap.counts["seen"] - stored.get("seen", 0)
        note = f" (no worker at the end: {missing} requests since its last write are not in it)"
    elif tap.final.stale:  # the store's are stale: the worker's numbers are the true ones
        counts = replaced(counts, stored, tap.final.counts)
        note = (
            f" (it refused the last writes: these are the worker's numbers, "
            f"{tap.final.unwritten} exchanges not written)"
        )
    click.echo(f"shadowdiff: {summary_line(cfg.run, counts)}; store {masked(cfg.store)}{note}")


@cli.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@options(
    PRIMARY.but(help="URL of the primary to send each request to as well."),
    SHADOW,
    SECONDARY,
    STORE,
    RUN,
    CONFIG,
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help=f"Requests in flight at most [mirror.max_in_flight: {_IN_FLIGHT}].",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Requests started per second at most [no limit].",
)
@click.option("--limit", type=click.IntRange(min=1), help="Replay only the first N entries.")
@click.option(
    "--sample",
    type=click.FloatRange(0, 1),
    help="Sample the recording at this rate, with the config's rate cap [replay all the "
    "sampling rules allow].",
)
@click.option("--timeout", help=f"Timeout of each request [mirror.timeout: {_TIMEOUT:g}s].")
@click.option(
    "--from-recorded-primary",
    is_flag=True,
    help="Compare with the recorded responses instead of calling a primary (latency not judged).",
)
@click.option("--quiet", is_flag=True, help="No progress bar (for CI logs).")
@click.option(
    "--gate", "then_gate", is_flag=True, help="Then judge the run; exit status as `gate`."
)
def replay(
    files: tuple[str, ...],
    config_path: str | None,
    concurrency: int | None,
    rate: float | None,
    limit: int | None,
    sample: float | None,
    timeout: str | None,
    from_recorded_primary: bool,
    quiet: bool,
    then_gate: bool,
    **flags: Any,
) -> None:
    """Replay recorded traffic (mitmproxy flow files, HAR) to the primary and the shadow.

    Exit status 0 (or the gate's with --gate), 2 bad usage or unreadable input, 130 stopped.
    """
    from shadowdiff.errors import RecordingError
    from shadowdiff.replay import read

    if from_recorded_primary and flags["primary"]:
        raise UsageProblem("--primary: not with --from-recorded-primary (the recording answers)")
    flags["run"] = flags.pop("run_name")
    flags["sampling.rate"] = sample
    flags["mirror.max_in_flight"] = concurrency
    if timeout is not None:
        try:
            flags["mirror.timeout"] = parse_duration(timeout)
        except ValueError as e:
            raise UsageProblem(f"--timeout: {e}") from None
    cfg = configured(config_path, flags)
    primary = None if from_recorded_primary else cfg.primary
    if not from_recorded_primary and primary is None:
        raise UsageProblem("--primary: required (or --from-recorded-primary)")
    setup_logging(cfg.log_level)
    logging.getLogger("shadowdiff.worker").setLevel(logging.WARNING)  # progress says it all
    open_store(cfg.store).close()  # refuse a bad store before reading anything
    try:
        recording = read(list(files), need_response=from_recorded_primary)
    except RecordingError as e:
        raise UsageProblem(str(e)) from None
    for warning in recording.warnings:
        click.echo(f"shadowdiff: warning: {warning}", err=True)
    recording.entries = recording.entries[:limit]
    # A recording is a sample already: all of it unless --sample asks for less.
    sampling = cfg.sampling
    if sample is None:
        sampling = sampling.model_copy(update={"rate": 1.0, "max_per_second": None})
    from shadowdiff.replay import replay as run_replay  # the worker: slow to import

    result = asyncio.run(
        run_replay(
            cfg,
            recording,
            sampling,
            primary,
            cfg.mirror.max_in_flight,
            rate,
            show_progress=not quiet and sys.stderr.isatty(),
        )
    )
    pairs = result.counts.get("recorded", 0) / max(result.elapsed, 1e-9)
    click.echo(
        f"shadowdiff: replayed {result.counts.get('seen', 0)} of {len(recording.entries)} "
        f"entries in {result.elapsed:.1f} s "
        f"({pairs:.0f} pairs/s); {summary_line(cfg.run, result.counts)}; store {masked(cfg.store)}"
    )
    if recording.skipped:
        detail = ", ".join(f"{k} {v}" for k, v in sorted(recording.skipped.items()))
        click.echo(f"shadowdiff: skipped {recording.skipped.total()} (cannot replay): {detail}")
    if result.interrupted:
        click.echo("shadowdiff: stopped early; everything recorded so far is kept", err=True)
        sys.exit(130)
    if then_gate:
        sys.exit(judge_run(cfg.store, cfg.run, cfg, as_json=False))


@cli.command()
@click.option("--requests", "count", default=300, show_default=True, help="Requests to drive.")
@click.option("--sample", default=0.7, show_default=True, type=float, help="Sample rate.")
@options(STORE_PATH.but(default="demo.db"))
def demo(count: int, sample: float, store_path: str) -> None:
    """Start a demo primary and shadow, proxy traffic through shadowdiff, show what was recorded."""
    from shadowdiff.cli.demo import run_demo

    run_demo(count, sample, store_path)
