"""The command line: `shadowdiff proxy`, `summary`, `gate`, `report`, `suggest-ignores`, `demo`.

Every usage or config error is one line on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from shadowdiff import __version__
from shadowdiff.config import Config, ConfigError, load_config
from shadowdiff.counts import by_reason, imbalance, summary_line
from shadowdiff.noise import findings, suggest_ignores
from shadowdiff.store import Store, StoreError


class UsageProblem(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shadowdiff")
def cli() -> None:
    """Mirror a sampled share of live traffic to a shadow and record what it answers."""


@cli.command()
@click.option("--primary", help="URL of the service the proxy forwards to (its answer is live).")
@click.option("--shadow", help="URL of the candidate version that gets the copies.")
@click.option("--secondary", help="URL of a second instance of the primary's version (noise).")
@click.option("--listen", help="HOST:PORT to listen on [127.0.0.1:8080].")
@click.option("--sample", help="Share of eligible requests to mirror, 0..1 [0.1].")
@click.option("--store", help="SQLite store path [shadowdiff.db].")
@click.option("--run", "run_name", help="Run name [default].")
@click.option("--config", "config_path", help="YAML config file; flags override it.")
def proxy(config_path: str | None, **flags: Any) -> None:
    """Run the reverse proxy in front of the primary, mirroring to the shadow."""
    sample = flags.pop("sample")
    if sample is not None:
        try:
            flags["sampling.rate"] = float(sample)
        except ValueError:
            raise UsageProblem(f"--sample: {sample!r} is not a number between 0 and 1") from None
    flags["run"] = flags.pop("run_name")
    try:
        cfg = load_config(config_path, flags)
    except ConfigError as e:
        raise UsageProblem(str(e)) from None
    if cfg.primary is None:
        raise UsageProblem("--primary: required (or set `primary` in the config file)")
    _logging(cfg.log_level)
    Store(cfg.store).close()  # refuse a bad store before taking traffic
    from shadowdiff.proxy import StartupError, serve

    try:
        asyncio.run(serve(cfg))
    except StartupError as e:
        click.echo(f"shadowdiff: error: {e}", err=True)
        sys.exit(1)
    with Store(cfg.store, create=False) as store:
        counts = store.counts(cfg.run)
    click.echo(f"shadowdiff: {summary_line(cfg.run, counts)}; store {cfg.store}")


def _runs(store: Store, store_path: str, run_name: str | None) -> list[str]:
    runs = store.runs()
    if run_name and run_name not in runs:
        raise UsageProblem(f"{store_path}: no run named {run_name!r}")
    return [run_name] if run_name else runs


@cli.command()
@click.option("--store", "store_path", default="shadowdiff.db", show_default=True)
@click.option("--run", "run_name", help="Run name [every run in the store].")
@click.option("--config", "config_path", help="Config file whose noise thresholds apply.")
@click.option("--fields", default=5, show_default=True, help="Divergent fields shown per route.")
def summary(store_path: str, run_name: str | None, config_path: str | None, fields: int) -> None:
    """Print what each run saw and recorded, and where the shadow diverges, by route."""
    noise_cfg = _config(config_path).noise
    with Store(store_path, create=False) as store:
        for run in _runs(store, store_path, run_name):
            counts = store.counts(run)
            click.echo(summary_line(run, counts))
            for reason, n in sorted(by_reason(counts, "not_eligible").items()):
                click.echo(f"  not eligible ({reason}): {n}")
            for problem in imbalance(counts):
                click.echo(f"  accounting: {problem}")
            for found in findings(store.routes(run), store.divergence_rows(run), noise_cfg):
                click.echo(
                    f"  {found.route}: {found.exchanges} exchanges: {found.matched} matched, "
                    f"{found.ignored} ignored, {found.noisy} noise only, "
                    f"{found.divergent} divergent"
                )
                for f in found.fields[:fields]:
                    note = f", secondary {f.noise_count} (noise)" if f.noise else ""
                    click.echo(f"      {f.path} {f.kind}: {f.count}{note}")


@cli.command("suggest-ignores")
@click.option("--store", "store_path", default="shadowdiff.db", show_default=True)
@click.option("--run", "run_name", required=True, help="Run name.")
def suggest_ignores_command(store_path: str, run_name: str) -> None:
    """Print ignore rules (YAML) for paths that differ in nearly every exchange with values
    that look generated: timestamps, UUIDs, random tokens. Review them before use."""
    with Store(store_path, create=False) as store:
        _runs(store, store_path, run_name)
        found = suggest_ignores(store.routes(run_name), store.divergence_rows(run_name))
    click.echo("# paths that differ in nearly every exchange with generated-looking values;")
    click.echo("# review, then paste under `compare:` in the config")
    rules = [{"route": route, "ignore": paths} for route, paths in found.items()]
    click.echo(yaml.safe_dump({"compare": {"routes": rules}}, sort_keys=False), nl=False)


def _config(path: str | None) -> Config:
    """The config whose thresholds a face applies; the defaults without a file."""
    try:
        return load_config(path) if path else load_config(None, {"shadow": "http://127.0.0.1:1"})
    except ConfigError as e:
        raise UsageProblem(str(e)) from None


def _one_run(store: Store, store_path: str, run_name: str | None) -> str:
    runs = _runs(store, store_path, run_name)
    if not runs:
        raise UsageProblem(f"{store_path}: the store holds no run yet")
    if len(runs) > 1:
        raise UsageProblem(f"--run: {store_path} holds several runs: {', '.join(runs)}")
    return runs[0]


EXIT = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}


@cli.command()
@click.option("--store", "store_path", default="shadowdiff.db", show_default=True)
@click.option("--run", "run_name", help="Run name [the store's only run].")
@click.option("--config", "config_path", help="Config file whose judge thresholds apply.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict document as JSON.")
def gate(store_path: str, run_name: str | None, config_path: str | None, as_json: bool) -> None:
    """Judge a run: exit 0 PASS, 1 FAIL, 3 INCONCLUSIVE (2: bad usage or unreadable store)."""
    from shadowdiff.evidence import document

    cfg = _config(config_path)
    with Store(store_path, create=False) as store:
        run = _one_run(store, store_path, run_name)
        doc, _, verdict = document(store, run, cfg)
    if as_json:
        from shadowdiff.report import render_json

        click.echo(render_json(doc), nl=False)
    else:
        click.echo(
            f"{verdict.verdict}: run {run!r}, {len(doc['routes'])} routes, "
            f"{doc['counts']['compared']} exchanges compared"
        )
        shown = [c for c in verdict.checks if c.result != "PASS"]
        for c in shown:
            click.echo(f"  {c.result:<12} {c.id:<16} {c.route}: {c.detail}")
    sys.exit(EXIT[verdict.verdict])


@cli.command()
@click.option("--store", "store_path", default="shadowdiff.db", show_default=True)
@click.option("--run", "run_name", help="Run name [the store's only run].")
@click.option("--config", "config_path", help="Config file whose thresholds apply.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "md", "json"]),
    required=True,
    help="Report format.",
)
@click.option("-o", "--output", help="File to write [standard output].")
def report(
    store_path: str, run_name: str | None, config_path: str | None, fmt: str, output: str | None
) -> None:
    """Write the divergence report of a run: HTML (self-contained), Markdown or JSON."""
    from shadowdiff.evidence import document
    from shadowdiff.report import render_html, render_json, render_markdown

    cfg = _config(config_path)
    with Store(store_path, create=False) as store:
        run = _one_run(store, store_path, run_name)
        doc, extras, _ = document(store, run, cfg)
    text = {
        "html": lambda: render_html(doc, extras),
        "md": lambda: render_markdown(doc),
        "json": lambda: render_json(doc),
    }[fmt]()
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as e:
        raise UsageProblem(f"-o: cannot write {output}: {e.strerror or e}") from None
    click.echo(f"{fmt} report of run {run!r} ({doc['verdict']}) written to {output}")


@cli.command()
@click.option("--requests", "count", default=300, show_default=True, help="Requests to drive.")
@click.option("--sample", default=0.7, show_default=True, type=float, help="Sample rate.")
@click.option("--store", "store_path", default="demo.db", show_default=True)
def demo(count: int, sample: float, store_path: str) -> None:
    """Start a demo primary and shadow, proxy traffic through shadowdiff, show what was recorded."""
    from shadowdiff.demo import run_demo

    run_demo(count, sample, store_path)


def _logging(level: str) -> None:
    logging.basicConfig(
        format="%(asctime)s %(name)s %(levelname)s %(message)s", level=level.upper(), force=True
    )
    # mitmproxy logs every client connection at INFO: costly and noisy in front of live traffic.
    logging.getLogger("mitmproxy").setLevel(max(logging.WARNING, logging.getLogger().level))


_NO_ARGS: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main() -> None:
    try:
        cli.main(standalone_mode=False, prog_name="shadowdiff")
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        ctx: click.Context | None = getattr(e, "ctx", None)
        if isinstance(e, _NO_ARGS) and ctx is not None:
            click.echo(ctx.get_help())
            sys.exit(0)
        where = f"{ctx.command_path}: " if ctx else ""
        click.echo(f"shadowdiff: error: {where}{e.format_message()}", err=True)
        sys.exit(2)
    except (UsageProblem, StoreError) as e:
        click.echo(f"shadowdiff: error: {e}", err=True)
        sys.exit(2)
