"""The CLI edge shared by every command (`train`, `serve`, `evaluate`, `make demo`, `make recipe`, the demo
data generator): the library's own error types become one-line messages and exit codes, never a traceback.
click is imported by the commands here and by the benchmarks' own entry points (python -m bench.NAME); no
stage, runtime, datagen or schemas module imports it."""
from __future__ import annotations

import logging
import sys

import click

from schemas.errors import DataError, UserError

# bitsandbytes logs a warning at import that it could not fetch an optional CPU kernel from a model hub
# ("Failed to load CPU gemm_4bit_forward from kernels-community"); its own fallback runs, so users
# need not see it on every command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


class _ErrorEdge:
    """DataError: every problem on its own line, exit 1. Other UserErrors: `error: ...`, exit 2."""

    def invoke(self, ctx):
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
    """A command group (`train`, `evaluate`, `serve`) with the error edge."""


class ErrorReportingCommand(_ErrorEdge, click.Command):
    """A single command (`python -m cli.demo`, `python -m cli.recipe`, `python -m cli.datagen`) with the error edge."""
