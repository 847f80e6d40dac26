"""The CLI edge shared by the `train`, `serve` and `evaluate` console scripts: the library's own error
types become one-line messages and exit codes, never a traceback. The only module here that imports
click; no library module imports it."""
from __future__ import annotations

import sys

import click

from .errors import DataError, UserError


class ErrorReportingGroup(click.Group):
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
