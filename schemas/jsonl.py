"""Reading JSONL files line by line, shared by the dataset loader and the results reader: every
unreadable file and undecodable line becomes a Problem naming the file and line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DataError, Problem

BOM = b"\xef\xbb\xbf"


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, or a DataError saying why it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise DataError([Problem(str(path), 0, "", f"cannot read: {e.strerror}")]) from None


def decode_line(where: str, line_no: int, raw: bytes) -> tuple[Any, Problem | None]:
    """One line as JSON, or the problem: not UTF-8, or not JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, Problem(where, line_no, "line", f"not valid UTF-8 (byte {e.start})")
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, Problem(where, line_no, "line", f"not valid JSON: {e.msg} (column {e.colno})")
