"""The commands that read a store and change nothing: `summary`, `gate`, `report`,
`suggest-ignores`, `incidents`.

The judge (scipy) and the report renderers load inside the commands, not at import.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import yaml

from shadowdiff.cli.common import CONFIG, RUN, STORE_PATH, UsageProblem, cli, face_config, options
from shadowdiff.config import Config
from shadowdiff.counts import LATENCY_REFERENCE, by_reason, imbalance, summary_line
from shadowdiff.model import span
from shadowdiff.store import Store, open_store


def _runs(store: Store, store_path: str, run_name: str | None) -> list[str]:
    runs = store.runs()
    if run_name and run_name not in runs:
        raise UsageProblem(f"{store_path}: no run named {run_name!r}")
    return [run_name] if run_name else runs


ONE_RUN = RUN.but(help="Run name [the store's only run].")
"""`--run` of the commands that judge one run (`_one_run`)."""


def _one_run(store: Store, store_path: str, run_name: str | None) -> str:
    runs = _runs(store, store_path, run_name)
    if not runs:
        raise UsageProblem(f"{store_path}: the store holds no run yet")
    if len(runs) > 1:
        raise UsageProblem(f"--run: {store_path} holds several runs: {', '.join(runs)}")
    return runs[0]


@cli.command()
@options(
    STORE_PATH,
    RUN.but(help="Run name [every run in the store]."),
    CONFIG.but(help="Config file whose noise thresholds and judge.confidence apply."),
)
@click.option("--fields", default=5, show_default=True, help="Divergent fields shown per route.")
def summary(store_path: str, run_name: str | None, config_path: str | None, fields: int) -> None:
    """Print what each run saw and recorded, and where the shadow diverges, by route."""
    from shadowdiff.judge import findings

    cfg = face_config(config_path)
    with open_store(store_path, create=False) as store:
        for run in _runs(store, store_path, run_name):
            counts = store.counts(run)
            click.echo(summary_line(run, counts))
            for reason, n in sorted(by_reason(counts, "not_eligible").items()):
                click.echo(f"  not eligible ({reason}): {n}")
            for problem in imbalance(counts):
                click.echo(f"  accounting: {problem}")
            timing = by_reason(counts, LATENCY_REFERENCE)
            if timing:
                text = ", ".join(f"{ref} {n}" for ref, n in sorted(timing.items()))
                click.echo(f"  latency baseline: {text}")
            for side, n in sorted(by_reason(counts, "untimed").items()):
                click.echo(f"  untimed {side} copies (the worker's loop stalled): {n}")
            found_all = findings(
                store.routes(run),
                store.path_counts(run),
                store.signatures(run),
                cfg.noise,
                confidence=cfg.judge.confidence,
            )
            for found in found_all:
                click.echo(
                    f"  {found.route}: {found.exchanges} exchanges: {found.matched} matched, "
                    f"{found.ignored} ignored, {found.noisy} noise only, "
                    f"{found.divergent} divergent"
                )
                if found.note and found.fields:
                    click.echo(f"      ({found.note})")
                for f in found.fields[:fields]:
                    note = f", secondary {f.noise_count} (noise)" if f.noise else ""
                    click.echo(f"      {f.path} {f.kind}: {f.count}{note}")


@cli.command("suggest-ignores")
@options(STORE_PATH, RUN.but(help="Run name.", required=True))
def suggest_ignores_command(store_path: str, run_name: str) -> None:
    """Print ignore rules (YAML) for paths that differ in nearly every exchange with values
    that look generated: timestamps, UUIDs, random tokens. Review them before use."""
    from shadowdiff.judge import suggest_ignores

    with open_store(store_path, create=False) as store:
        _runs(store, store_path, run_name)
        found = suggest_ignores(
            store.routes(run_name), store.path_counts(run_name), store.divergence_rows(run_name)
        )
    click.echo("# paths that differ in nearly every exchange with generated-looking values;")
    click.echo("# review, then paste under `compare:` in the config")
    rules = [{"route": route, "ignore": paths} for route, paths in found.items()]
    click.echo(yaml.safe_dump({"compare": {"routes": rules}}, sort_keys=False), nl=False)


EXIT = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}
"""The exit status of each verdict (`gate`, `replay --gate`)."""


@cli.command()
@options(STORE_PATH, ONE_RUN, CONFIG.but(help="Config file whose judge thresholds apply."))
@click.option("--json", "as_json", is_flag=True, help="Print the verdict document as JSON.")
def gate(store_path: str, run_name: str | None, config_path: str | None, as_json: bool) -> None:
    """Judge a run: exit 0 PASS, 1 FAIL, 3 INCONCLUSIVE (2: bad usage or unreadable store)."""
    sys.exit(judge_run(store_path, run_name, face_config(config_path), as_json))


def judge_run(store_path: str, run_name: str | None, cfg: Config, as_json: bool) -> int:
    """Prints a run's verdict as `gate` does (also after `replay --gate`); its exit status."""
    from shadowdiff.judge import document

    with open_store(store_path, create=False) as store:
        run = _one_run(store, store_path, run_name)
        doc, _, verdict = document(store, run, cfg, extras=False)  # it shows no examples
    if as_json:
        from shadowdiff.faces import render_json

        click.echo(render_json(doc), nl=False)
    else:
        click.echo(
            f"{verdict.verdict}: run {run!r}, {len(doc['routes'])} routes, "
            f"{doc['counts']['compared']} exchanges compared"
        )
        shown = [c for c in verdict.checks if c.result != "PASS"]
        for c in shown:
            click.echo(f"  {c.result:<12} {c.id:<16} {c.route}: {c.detail}")
        for problem in doc["accounting"]:
            click.echo(f"  accounting: {problem}")
    return EXIT[verdict.verdict]


@cli.command()
@options(STORE_PATH, ONE_RUN, CONFIG.but(help="Config file whose thresholds apply."))
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
    from shadowdiff.faces import render_html, render_json, render_markdown
    from shadowdiff.judge import document

    cfg = face_config(config_path)
    with open_store(store_path, create=False) as store:
        run = _one_run(store, store_path, run_name)
        doc, extras, _ = document(store, run, cfg, extras=fmt == "html")
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
@options(STORE_PATH, RUN.but(help="Run name [every run in the store]."))
@click.option("--json", "as_json", is_flag=True, help="Print every incident as JSON.")
def incidents(store_path: str, run_name: str | None, as_json: bool) -> None:
    """List the incidents (a route's check that turned FAIL) with their response times:
    to detect (first bad exchange → page), acknowledge (page → ack), mitigate and resolve
    (first bad exchange → either)."""
    import json
    from datetime import UTC, datetime

    with open_store(store_path, create=False) as store:
        found = [i for run in _runs(store, store_path, run_name) for i in store.incidents(run)]
    if as_json:
        click.echo(json.dumps([i.row() for i in found], indent=2))
        return
    if not found:
        click.echo("no incidents")
        return
    for i in found:
        d = i.durations()
        state = "open" if i.resolved is None else "resolved"
        started = datetime.fromtimestamp(i.started, UTC).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"{i.key[:12]}  {state:<8} {i.severity:<8} team {i.team or '-'}  run {i.run}"
            f"  {i.route}  {i.check}"
        )
        click.echo(
            f"    started {started} UTC; detect {span(d['detect'])}, acknowledge"
            f" {span(d['acknowledge'])}, mitigate {span(d['mitigate'])}, resolve"
            f" {span(d['resolve'])}"
        )
        if i.acked_by:
            click.echo(f"    acknowledged by {i.acked_by}")
        if i.resolved_why:
            click.echo(f"    resolved: {i.resolved_why}")
