"""Error types the library raises for user mistakes; the CLIs print them as one line each."""
from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """A mistake the user can fix (bad input, bad option). Printed without a traceback."""


@dataclass(frozen=True)
class Problem:
    """One problem in an input file, located by file, line and field."""

    file: str
    line: int
    field: str
    message: str

    @property
    def where(self) -> str:
        """file:line (the file alone for a problem of the whole file)."""
        return f"{self.file}:{self.line}" if self.line else self.file

    @property
    def what(self) -> str:
        """field: message (the message alone when no field is named)."""
        return f"{self.field}: {self.message}" if self.field else self.message

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


class DataError(UserError):
    """A file was refused; every problem found is listed."""

    def __init__(self, problems: list[Problem], hint: str = ""):
        self.problems = problems
        self.hint = hint
        lines = [str(p) for p in problems]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))
