"""The config schema: defaults, durations and sizes, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from shadowdiff.config import Mirror, load_config, parse_duration
from shadowdiff.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "configs" / "example.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_are_safe():
    cfg = load_config(None, {"shadow": "http://127.0.0.1:9000/"})
    assert cfg.shadow == "http://127.0.0.1:9000"  # trailing slash dropped for path joining
    assert cfg.sampling.methods == ["GET", "HEAD", "OPTIONS"]
    assert cfg.mirror.timeout == 5.0 and cfg.mirror.max_in_flight == 100
    assert cfg.mirror.max_body == 1024 * 1024
    assert cfg.listen == "127.0.0.1:8080"


def test_example_config_covers_every_option():
    cfg = load_config(EXAMPLE)
    text = EXAMPLE.read_text()

    def keys(model, prefix=""):
        for name, value in model:
            if isinstance(value, BaseModel):
                yield from keys(value, f"{prefix}{name}.")
            yield prefix + name

    for key in keys(cfg):
        assert f"{key.rsplit('.', 1)[-1]}:" in text, key


def test_flags_override_file(tmp_path):
    path = write(tmp_path, "shadow: http://a:1\nsampling:\n  rate: 0.5\n")
    cfg = load_config(path, {"sampling.rate": 0.2, "run": "rc1", "secondary": None})
    assert cfg.sampling.rate == 0.2 and cfg.run == "rc1" and cfg.shadow == "http://a:1"


@pytest.mark.parametrize(
    "value, seconds", [("5s", 5.0), ("250ms", 0.25), ("1m", 60.0), (3, 3.0), ("1.5h", 5400.0)]
)
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value, size",
    [
        ("1MiB", 1048576),
        ("16MiB", 16 * 1048576),
        ("512KB", 512000),
        ("100b", 100),
        ("1.5 MiB", 1572864),
        ("1kib", 1024),
        ("2MB", 2_000_000),
        ("4096", 4096),
        (4096, 4096),
    ],
)
def test_sizes(value, size):
    assert Mirror(max_body=value).max_body == size  # pydantic's ByteSize


BAD = [
    (
        "shadow: http://a:1\nsampling:\n  rte: 0.1\n",
        "sampling.rte: unknown option (did you mean 'rate'?)",
    ),
    (
        "shadow: http://a:1\nsampling:\n  rate: 1.5\n",
        "sampling.rate: Input should be less than or equal to 1 (got 1.5)",
    ),
    (
        "shadow: localhost:8080\n",
        "shadow: 'localhost:8080' is not a URL with an http:// or https:// scheme and a host",
    ),
    (
        "shadow: http://a:1\nmirror:\n  timeout: 5 parsecs\n",
        "mirror.timeout: '5 parsecs' is not a duration (use e.g. 5s, 250ms, 1m)",
    ),
    (
        "shadow: http://a:1\nmirror:\n  max_body: lots\n",
        "mirror.max_body: 'lots' is not a size (use e.g. 1MiB, 512KB, 4096)",
    ),
    (
        "shadow: http://a:1\nmirror:\n  max_body: 1 parsec\n",
        "mirror.max_body: '1 parsec' is not a size (use e.g. 1MiB, 512KB, 4096)",
    ),
    (
        "shadow: http://a:1\nmirror:\n  max_backlog: 0\n",
        "mirror.max_backlog: size must be positive (got 0)",
    ),
    (
        "shadow: http://a:1\nmirror:\n  max_body: true\n",
        "mirror.max_body: True is not a size (use e.g. 1MiB, 512KB)",
    ),
    (
        "shadow: http://a:1\nsampling:\n  sticky_key: user\n",
        "sampling.sticky_key: 'user' is not header:NAME, cookie:NAME or query:NAME",
    ),
    (
        "shadow: http://a:1\nsampling:\n  routes:\n    - path: /s\n      rate: -1\n",
        "sampling.routes[0].rate: Input should be greater than or equal to 0 (got -1)",
    ),
    ("primary: http://a:1\n", "shadow: required option is missing"),
    (
        "shadow: http://a:1\nlisten: nowhere\n",
        "listen: 'nowhere' is not HOST:PORT (e.g. 127.0.0.1:8080)",
    ),
    ("shadow: http://a:1\nshadw: x\n", "shadw: unknown option (did you mean 'shadow'?)"),
    ("- a\n- b\n", "the top level must be a mapping of options"),
    ("shadow: [unclosed\n", "invalid YAML at line 2: expected ',' or ']', but got '<stream end>'"),
]


NOT_FINITE = [  # YAML's .inf and .nan are floats, not values of any option (finding 12)
    (
        "shadow: http://a:1\nmirror:\n  timeout: .inf\n",
        "mirror.timeout: duration must be a finite number of seconds (got inf)",
    ),
    (
        "shadow: http://a:1\nmirror:\n  grace: .inf\n",
        "mirror.grace: duration must be a finite number of seconds (got inf)",
    ),
    (
        "shadow: http://a:1\ncontrol:\n  verdict_every: .nan\n",
        "control.verdict_every: duration must be a finite number of seconds (got nan)",
    ),
    (
        "shadow: http://a:1\nlog_interval: .nan\n",
        "log_interval: duration must be a finite number of seconds (got nan)",
    ),
    (
        "shadow: http://a:1\nalerts:\n  debounce: -.inf\n",
        "alerts.debounce: duration must be a finite number of seconds (got -inf)",
    ),
    (
        "shadow: http://a:1\nmirror:\n  grace: 1.0e+12\n",
        "mirror.grace: duration must be at most 168h (got 1000000000000.0)",
    ),
    (
        "shadow: http://a:1\nsampling:\n  rate: .nan\n",
        "sampling.rate: Input should be a finite number (got nan)",
    ),
    (
        "shadow: http://a:1\nsampling:\n  max_per_second: .inf\n",
        "sampling.max_per_second: Input should be a finite number (got inf)",
    ),
    (
        "shadow: http://a:1\ncompare:\n  tolerance: [{path: 'body:$.a', relative: .inf}]\n",
        "compare.tolerance[0].relative: Input should be a finite number (got inf)",
    ),
    (
        "shadow: http://a:1\njudge:\n  p99_tolerance: .inf\n",
        "judge.p99_tolerance: Input should be a finite number (got inf)",
    ),
    (
        "shadow: http://a:1\nmirror:\n  max_in_flight: .inf\n",
        "mirror.max_in_flight: Input should be a finite number (got inf)",
    ),
    (
        "shadow: http://a:1\nmax_unwritten: .inf\n",
        "max_unwritten: 'inf' is not a size (use e.g. 1MiB, 512KB, 4096)",
    ),
]


STAGGER = [
    (
        "shadow: http://a:1\nlatency:\n  stagger: 2s\n",
        "latency.stagger: stagger must be at most 1s (got '2s')",
    ),
    (
        "shadow: http://a:1\nlatency:\n  stagger: soon\n",
        "latency.stagger: 'soon' is not a duration (use e.g. 5s, 250ms, 1m)",
    ),
    (
        "shadow: http://a:1\nlatency:\n  stagger: -0.5\n",
        "latency.stagger: stagger must be 0 or more (got -0.5)",
    ),
]


@pytest.mark.parametrize("value, seconds", [("0", 0.0), (0, 0.0), ("0ms", 0.0), ("20ms", 0.02)])
def test_a_stagger_may_be_none(value, seconds):
    cfg = load_config(None, {"shadow": "http://a:1", "latency.stagger": value})
    assert cfg.latency.stagger == seconds


@pytest.mark.parametrize("text, message", BAD + NOT_FINITE + STAGGER)
def test_bad_config_one_line_error(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"
    assert "\n" not in str(info.value)


def test_bad_override_is_named_as_the_caller_names_it():
    names = {"sampling.rate": "--sample", "shadow": "--shadow"}
    with pytest.raises(ConfigError, match=r"^--sample: Input should be less than or equal to 1"):
        load_config(None, {"shadow": "http://a:1", "sampling.rate": 1.5}, names=names)
    with pytest.raises(ConfigError, match=r"^--shadow: 'x' is not a URL"):
        load_config(None, {"shadow": "x"}, names=names)
    with pytest.raises(ConfigError, match=r"^config: shadow: 'x' is not a URL"):
        load_config(None, {"shadow": "x"})


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read config: No such file"):
        load_config(tmp_path / "nope.yaml")


def test_control_beyond_loopback_needs_a_token(monkeypatch):
    from shadowdiff.config import access_token

    monkeypatch.delenv("SHADOWDIFF_TOKEN", raising=False)
    shadow = {"shadow": "http://a:1"}
    assert access_token(load_config(None, shadow).control) is None
    assert access_token(load_config(None, {**shadow, "control.listen": "[::1]:9"}).control) is None
    assert load_config(None, {**shadow, "control.listen": "off"}).control.listen is None
    wide = load_config(None, {**shadow, "control.listen": "0.0.0.0:9464"}).control
    with pytest.raises(ConfigError, match="reachable beyond loopback; set control.token"):
        access_token(wide)
    monkeypatch.setenv("SHADOWDIFF_TOKEN", "t0k")
    assert access_token(wide) == "t0k"
    with pytest.raises(ConfigError, match="control.listen: 'nowhere' is not HOST:PORT"):
        load_config(None, {**shadow, "control.listen": "nowhere"})


@pytest.mark.parametrize(
    "key, value, where",
    [
        ("compare.ignore", ["body:$..["], "compare.ignore[0]"),
        ("compare.unordered", ["body:$.items["], "compare.unordered[0]"),
        ("compare.tolerance", [{"path": "body:$$"}], "compare.tolerance[0].path"),
        (
            "compare.normalize",
            [{"path": "body:$.[", "pattern": "x"}],
            "compare.normalize[0].path",
        ),
        ("compare.routes", [{"route": "GET /", "ignore": ["body:$['a"]}], "compare.routes[0]"),
        ("judge.accepted_paths", ["body:$x"], "judge.accepted_paths[0]"),
    ],
)
def test_json_paths_are_parsed_when_the_config_loads(key, value, where):
    """With the parser the comparison uses: one bad path used to drop every exchange
    (`dropped.compare`) and log a traceback per request (audit finding 12)."""
    with pytest.raises(ConfigError, match=r"is not a valid JSON path: bad path pattern") as info:
        load_config(None, {"shadow": "http://a:1", key: value})
    assert str(info.value).startswith(f"config: {where}")
    good = ["body:$..trace_id", "body:$.items[*].price", "body:$['odd key'][3]", "header:x-a"]
    cfg = load_config(None, {"shadow": "http://a:1", "compare.ignore": good})
    assert cfg.compare.ignore == good


def deep_yaml(depth: int) -> str:
    return "shadow: http://a:1\nrun: " + "[" * depth + "x" + "]" * depth + "\n"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"shadow: http://a:1\nrun: \xff\xfe\n", "cannot read config: not UTF-8 text (byte 0xff"),
        (deep_yaml(5000).encode(), "invalid YAML: nested too deeply"),
        (b"shadow: http://a:1\nrun: 2020-13-01\n", "invalid YAML: cannot read a value (month"),
        (b"shadow: http://a:1\nlog_interval: " + b"9" * 5000 + b"\n", "invalid YAML: cannot read"),
        (b'shadow: http://a:1\n"x\\ny": 1\n', "'x\\ny': unknown option"),
    ],
)
def test_a_file_that_cannot_be_read_is_one_line(tmp_path, data, message):
    """Invalid UTF-8 and 5,000-deep YAML ended in tracebacks (audit finding 15), as did a
    date or an integer PyYAML cannot build."""
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {message}")
    assert "\n" not in str(info.value)


def test_no_config_file_fills_the_memory():
    with pytest.raises(ConfigError, match=r"^/dev/zero: cannot read config: larger than 16 MiB"):
        load_config("/dev/zero")
