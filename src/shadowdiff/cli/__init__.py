"""The command line: `shadowdiff proxy`, `replay`, `ctl`, `summary`, `gate`, `report`,
`suggest-ignores`, `runs`, `demo`.

Every usage or config error is one line on stderr with exit status 2, never a traceback.
The group and the shared options are in `common`; the commands in `run` (proxy, replay,
demo), `read` (summary, gate, report, suggest-ignores), `runs` and `ctl`, which register on
import.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from shadowdiff.cli import ctl, read, run, runs  # noqa: F401 - registers the commands
from shadowdiff.cli.common import FLAG_KEYS, UsageProblem, cli, options
from shadowdiff.cli.ctl import Unreachable
from shadowdiff.store import StoreError

__all__ = ["FLAG_KEYS", "UsageProblem", "cli", "main", "options"]

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
    except Unreachable as e:
        click.echo(f"shadowdiff: error: {e}", err=True)
        sys.exit(1)
