"""The command line as a user types it: help, one-line errors with exit 2, summary."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from conftest import shadowdiff
from shadowdiff.model import Divergence, Exchange, Outcome, RequestSnapshot
from shadowdiff.store import SCHEMA_VERSION, SQLiteStore, masked


def test_help():
    result = shadowdiff("--help")
    assert result.returncode == 0
    for command in ("proxy", "summary", "demo"):
        assert command in result.stdout
    proxy_help = shadowdiff("proxy", "--help").stdout
    for flag in (
        "--primary",
        "--shadow",
        "--secondary",
        "--listen",
        "--sample",
        "--store",
        "--run",
        "--config",
    ):
        assert flag in proxy_help


def test_flags_and_help_defaults_come_from_the_config_model():
    from shadowdiff.cli import FLAG_KEYS, cli
    from shadowdiff.cli.common import default

    proxy = cli.commands["proxy"]
    names = {opt for param in proxy.params for opt in param.opts}
    assert set(FLAG_KEYS.values()) <= names  # every named flag is a real proxy option
    assert FLAG_KEYS["sampling.rate"] == "--sample"
    assert (default("listen"), default("sampling.rate"), default("mirror.timeout")) == (
        "127.0.0.1:8080",
        0.1,
        5.0,
    )
    helps = {
        command: {p.name: getattr(p, "help", None) for p in cli.commands[command].params}
        for command in ("proxy", "replay")
    }
    assert helps["proxy"]["listen"] == "HOST:PORT to listen on [127.0.0.1:8080]."
    assert helps["proxy"]["sample"] == "Share of eligible requests to mirror, 0..1 [0.1]."
    assert helps["proxy"]["control"].endswith("[127.0.0.1:9464].")
    assert helps["replay"]["timeout"] == "Timeout of each request [mirror.timeout: 5s]."
    assert helps["replay"]["concurrency"].endswith("[mirror.max_in_flight: 100].")
    gate_store = next(p for p in cli.commands["gate"].params if p.name == "store_path")
    assert gate_store.default == "shadowdiff.db"


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["proxy", "--shadow=http://a:1", "--sample=1.5", "--primary=http://b:1"],
            "shadowdiff: error: --sample: Input should be less than or equal to 1 (got 1.5)",
        ),
        (
            ["proxy", "--shadow=http://a:1", "--sample=half", "--primary=http://b:1"],
            "shadowdiff: error: shadowdiff proxy: Invalid value for '--sample': 'half' is not a"
            " number between 0 and 1",
        ),
        (
            ["proxy", "--shadow=http://a:1", "--control=nowhere", "--primary=http://b:1"],
            "shadowdiff: error: --control: 'nowhere' is not HOST:PORT (e.g. 127.0.0.1:8080)",
        ),
        (
            ["replay", "x.har", "--sample=half"],
            "shadowdiff: error: shadowdiff replay: Invalid value for '--sample': 'half' is not a"
            " valid float range.",
        ),
        (
            ["proxy", "--shadow=http://a:1"],
            "shadowdiff: error: --primary: required (or set `primary` in the config file)",
        ),
        (
            ["proxy", "--shadow=a:1", "--primary=http://b:1"],
            "shadowdiff: error: --shadow: 'a:1' is not a URL with an http:// or https:// scheme"
            " and a host",
        ),
        (
            ["proxy", "--listen=x", "--shadow=http://a:1", "--primary=http://b:1"],
            "shadowdiff: error: --listen: 'x' is not HOST:PORT (e.g. 127.0.0.1:8080)",
        ),
        (["proxy", "--bogus"], "shadowdiff: error: shadowdiff proxy: No such option '--bogus'."),
        (["nope"], "shadowdiff: error: shadowdiff: No such command 'nope'."),
    ],
)
def test_bad_usage_is_one_line_exit_2(args, message):
    result = shadowdiff(*args)
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_config_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("shadow: http://a:1\nmirror:\n  timeout: 5 parsecs\n")
    result = shadowdiff("proxy", "--primary=http://b:1", f"--config={config}")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"shadowdiff: error: {config}: mirror.timeout: '5 parsecs' is not a duration"
        " (use e.g. 5s, 250ms, 1m)"
    )


def test_proxy_refuses_a_foreign_store_before_serving(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    result = shadowdiff("proxy", "--primary=http://b:1", "--shadow=http://a:1", f"--store={junk}")
    assert result.returncode == 2
    assert result.stderr.startswith(f"shadowdiff: error: {junk}: not a readable shadowdiff store")
    assert junk.read_bytes() == b"not a database" * 100  # nothing touched


def test_summary(tmp_path):
    path = tmp_path / "s.db"
    request = RequestSnapshot("f", "GET", "/users/3", [], b"", 0.0)
    x = Exchange(request, Outcome(200, [], b"a"), Outcome(200, [], b"b"), None, "GET /users/{id}")
    x.shadow_diffs = [Divergence("body", "changed", "1 bytes", "1 bytes")]
    with SQLiteStore(path) as store:
        counts = {"seen": 3, "not_eligible.loop": 1, "not_sampled.rate": 1, "sampled": 1}
        worker = {"recorded": 1, "latency_reference.secondary": 1, "untimed.shadow": 1}
        store.write("rc1", "h:1", [x], {"tap": counts, "worker": worker})
    result = shadowdiff("summary", f"--store={path}")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "run 'rc1': seen 3, sampled 1, recorded 1, dropped 0",
        "  not eligible (loop): 1",
        "  latency baseline: secondary 1",
        "  untimed shadow copies (the worker's loop stalled): 1",
        "  GET /users/{id}: 1 exchanges: 0 matched, 0 ignored, 0 noise only, 1 divergent",
        "      (no secondary: noise cannot be told apart, every difference counts)",
        "      body changed: 1",
    ]
    missing = shadowdiff("summary", f"--store={path}", "--run=nope")
    assert (missing.returncode, missing.stderr.strip()) == (
        2,
        f"shadowdiff: error: {path}: no run named 'nope'",
    )
    absent = shadowdiff("summary", f"--store={tmp_path / 'none.db'}")
    assert absent.returncode == 2 and "no such store" in absent.stderr


def test_demo_runs_end_to_end(tmp_path):
    result = shadowdiff("demo", "--requests=120", "--store=d.db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "drove 120 requests through the proxy" in result.stdout
    assert "GET /users/{id}" in result.stdout
    with SQLiteStore(tmp_path / "d.db", create=False) as store:
        counts = store.counts("demo")
    assert counts["seen"] == 120 and counts["recorded"] > 20


def deep_yaml(depth: int) -> bytes:
    return ("shadow: http://a:1\nrun: " + "[" * depth + "x" + "]" * depth + "\n").encode()


TARGETS = ["--primary=http://127.0.0.1:9", "--shadow=http://127.0.0.1:9", "--control=off"]


@pytest.mark.parametrize(
    "command, config, message",
    [
        (
            ["proxy", *TARGETS],
            b"compare:\n  ignore: ['body:$..[']\n",
            "compare.ignore[0]: 'body:$..[' is not a valid JSON path: bad path pattern",
        ),
        (
            ["proxy", *TARGETS],
            b"mirror:\n  grace: .inf\n",
            "mirror.grace: duration must be a finite number of seconds (got inf)",
        ),
        (["gate"], deep_yaml(5000), "invalid YAML: nested too deeply"),
        (["summary"], b"run: \xff\xfe\n", "cannot read config: not UTF-8 text (byte 0xff"),
        (
            ["report", "--format=md"],
            b"control:\n  verdict_every: .nan\n",
            "control.verdict_every: duration must be a finite number of seconds (got nan)",
        ),
        (
            ["replay", "x.har", *TARGETS[:2]],
            b"judge:\n  accepted_paths: ['body:$x']\n",
            "judge.accepted_paths[0]: 'body:$x' is not a valid JSON path",
        ),
    ],
)
def test_a_config_that_would_break_the_run_is_one_line_exit_2(tmp_path, command, config, message):
    """Refused before anything starts, by every command that reads a config (audit findings
    12 and 15): a bad JSON path dropped every exchange, `.inf` and `.nan` durations broke
    the copies, shutdown and the alert loop; invalid UTF-8 and deep YAML were tracebacks."""
    path = tmp_path / "c.yaml"
    path.write_bytes(b"shadow: http://127.0.0.1:9\n" + config)
    store = tmp_path / "s.db"
    result = shadowdiff(*command, f"--config={path}", f"--store={store}")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"shadowdiff: error: {path}: {message}")
    assert result.stderr.count("\n") == 1
    assert not store.exists()


@pytest.fixture(params=["sqlite", "postgresql"])
def incomplete_store(request, tmp_path) -> str:
    """A store whose meta claims this schema version and that has no other table."""
    ddl = "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
    version = f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}')"
    if request.param == "sqlite":
        path = tmp_path / "v4_missing.db"
        db = sqlite3.connect(path)
        db.execute(ddl)
        db.execute(version)
        db.commit()
        db.close()
        return str(path)
    url = request.getfixturevalue("url")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ddl)
        conn.execute(version)
    return url


@pytest.mark.parametrize(
    "command",
    [
        ["summary"],
        ["gate"],
        ["report", "--format=md"],
        ["suggest-ignores", "--run=r"],
        ["proxy", *TARGETS],
        ["replay", "x.har", *TARGETS[:2]],
    ],
)
def test_a_store_claiming_a_schema_without_its_tables_is_one_line_exit_2(incomplete_store, command):
    """The audit's `v4_missing.db`: the proxy used to take traffic and retry "no such
    table" for every batch, the readers to answer without naming the store (finding 16)."""
    result = shadowdiff(*command, f"--store={incomplete_store}")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"shadowdiff: error: {masked(incomplete_store)}: not a complete shadowdiff store"
        f" (schema version {SCHEMA_VERSION} without table exchanges); use a new store path\n"
    )
