"""The CLI edge shared by every command (`patent-risk` and its subcommands, `evaluate`): the library's own error
types become one-line messages and exit codes, never a traceback, and every command takes -h as well as --help.
click is imported by the commands here and by the benchmarks' own entry points (`patent-risk bench ...`); no
stage, runtime, datagen or schemas module imports it."""
from __future__ import annotations

import logging
import sys

import click

from patent_risk import __version__
from patent_risk.runtime.progress import quiet_library_bars
from patent_risk.schemas.errors import DataError, UserError

# bitsandbytes logs a warning at import that it could not fetch an optional CPU kernel from a model hub
# ("Failed to load CPU gemm_4bit_forward from kernels-community"); its own fallback runs, so users
# need not see it on every command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
# --version (-V) on `patent-risk` and on `evaluate`
version_option = click.version_option(__version__, "--version", "-V", package_name="patent-risk-eval",
                                      message="%(prog)s %(version)s (patent_risk)")


class _ErrorEdge:
    """DataError: every problem on its own line, exit 1. Other UserErrors: `error: ...`, exit 2. -h is --help
    (subcommands inherit it from their group's context)."""

    def __init__(self, *args, **kwargs):
        kwargs["context_settings"] = {**HELP_OPTIONS, **(kwargs.get("context_settings") or {})}
        super().__init__(*args, **kwargs)

    def invoke(self, ctx):
        if ctx.parent is None:
            quiet_library_bars()  # a log file gets lines, not the libraries' carriage-return frames
        try:
            return super().invoke(ctx)
        except DataError as e:
            for p in e.problems:
                click.echo(str(p), err=True)
            if e.hint:
                click.echo(e.hint, err=True)
            sys.exit(1)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


class ErrorReportingGroup(_ErrorEdge, click.Group):
    """A command group (`patent-risk`, `train`, `evaluate`, `serve`, `bench`) with the error edge."""


class ErrorReportingCommand(_ErrorEdge, click.Command):
    """A single command (`patent-risk demo`, `recipe`, `compare`, `datagen`) with the error edge."""
