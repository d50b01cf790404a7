"""What the commands share: the click group, the options several declare alike (their help
defaults read from the config model), the flag names of config keys, and the one-line error.

Imports nothing slow: `shadowdiff --help` loads this and every command module.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click
from pydantic import BaseModel

from shadowdiff import __version__
from shadowdiff.config import Config, load_config
from shadowdiff.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class UsageProblem(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shadowdiff")
def cli() -> None:
    """Mirror a sampled share of live traffic to a shadow and record what it answers."""


def default(key: str) -> Any:
    """The default of the config key `key` (`mirror.timeout`), as the model declares it."""
    model: type[BaseModel] = Config
    *parents, leaf = key.split(".")
    for part in parents:
        inner = model.model_fields[part].annotation
        assert isinstance(inner, type) and issubclass(inner, BaseModel), key
        model = inner
    return model.model_fields[leaf].get_default(call_default_factory=True)


@dataclasses.dataclass(frozen=True)
class Option:
    """A `click.option` several commands declare alike; `key` is the config key it sets."""

    decls: tuple[str, ...]
    help: str | None = None
    key: str | None = None
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def but(self, help: str | None = None, **attrs: Any) -> Option:
        """This option with another help text, or other arguments to `click.option`."""
        return dataclasses.replace(
            self, help=self.help if help is None else help, attrs={**self.attrs, **attrs}
        )


def options(*shared: Option) -> Callable[[F], F]:
    """The decorator that declares the `shared` options on a command, in this order (the
    order of its --help): each is written once, here, for every command."""

    def decorate(f: F) -> F:
        for option in reversed(shared):
            f = click.option(*option.decls, help=option.help, **option.attrs)(f)
        return f

    return decorate


def _sets(key: str, *decls: str, help: str, **attrs: Any) -> Option:
    """An option that overrides config `key`; `{default}` in `help` is the model's default."""
    return Option(decls, help.format(default=default(key)), key, attrs)


def share(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """A flag's number for a share of requests; the config model checks the range (0..1),
    so that a file and a flag get the same message."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number between 0 and 1") from None


PRIMARY = _sets("primary", "--primary", help="URL of the primary.")
SHADOW = _sets("shadow", "--shadow", help="URL of the candidate version.")
SECONDARY = _sets(
    "secondary", "--secondary", help="URL of a second instance of the primary's version (noise)."
)
LISTEN = _sets("listen", "--listen", help="HOST:PORT to listen on [{default}].")
SAMPLE = _sets(
    "sampling.rate",
    "--sample",
    help="Share of eligible requests to mirror, 0..1 [{default}].",
    callback=share,
)
STORE = _sets("store", "--store", help="SQLite path or postgresql:// URL [{default}].")
RUN = _sets("run", "--run", "run_name", help="Run name [{default}].")
CONTROL = _sets(
    "control.listen",
    "--control",
    help="HOST:PORT of the control server and dashboard, or off [{default}].",
)
CONFIG = Option(("--config", "config_path"), "YAML config file; flags override it.")
STORE_PATH = Option(
    ("--store", "store_path"), attrs={"default": default("store"), "show_default": True}
)
"""`--store` of the commands that read a store, not the config."""

FLAG_KEYS = {
    option.key: option.decls[0]
    for option in (PRIMARY, SHADOW, SECONDARY, LISTEN, SAMPLE, STORE, RUN, CONTROL)
    if option.key
}
"""Which command-line flag sets which config key, so a bad flag is named as the flag."""


def configured(path: str | None, flags: dict[str, Any]) -> Config:
    """The config from `path` with the command's `flags` (dotted keys) on top."""
    try:
        return load_config(path, flags, names=FLAG_KEYS)
    except ConfigError as e:
        raise UsageProblem(str(e)) from None


def face_config(path: str | None) -> Config:
    """The config whose thresholds a face applies; the defaults without a file."""
    try:
        return load_config(path) if path else load_config(None, {"shadow": "http://127.0.0.1:1"})
    except ConfigError as e:
        raise UsageProblem(str(e)) from None


def setup_logging(level: str) -> None:
    logging.basicConfig(
        format="%(asctime)s %(name)s %(levelname)s %(message)s", level=level.upper(), force=True
    )
    # mitmproxy logs every client connection at INFO: costly and noisy in front of live traffic.
    logging.getLogger("mitmproxy").setLevel(max(logging.WARNING, logging.getLogger().level))
