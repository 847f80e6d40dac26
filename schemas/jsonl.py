"""Reading JSONL files line by line, shared by the dataset loader and the results reader: every
unreadable file and undecodable line becomes a Problem naming the file and line."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import DataError, Problem

BOM = b"\xef\xbb\xbf"
MISSING = object()  # what `dig` returns for a path that is not there


def dig(value: Any, path: str) -> Any:
    """The value at a dotted ``path`` (``meta.boundary.distance``) of decoded JSON, or MISSING when a step
    of the path is absent or not an object."""
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, or a DataError saying why it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise DataError([Problem(str(path), 0, "", f"cannot read: {e.strerror}")]) from None


# a \u escape of a UTF-16 surrogate: only lines that have one need the (slower) lone-surrogate check
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a decoded JSON value holds a string (or key) with an unpaired surrogate (not Unicode text)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def decode_line(where: str, line_no: int, raw: bytes) -> tuple[Any, Problem | None]:
    """One line as JSON, or the problem: not UTF-8, not JSON, or JSON that Python cannot hold
    (numbers over the int-string limit, nesting past the recursion limit, lone surrogates)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, Problem(where, line_no, "line", f"not valid UTF-8 (byte {e.start})")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, Problem(where, line_no, "line", f"not valid JSON: {e.msg} (column {e.colno})")
    except ValueError as e:  # an integer longer than sys.get_int_max_str_digits()
        return None, Problem(where, line_no, "line", f"not readable JSON: {str(e).split(';')[0]}")
    except RecursionError:
        return None, Problem(where, line_no, "line", "not readable JSON: nested too deeply")
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(obj):
        return None, Problem(where, line_no, "line", "not valid Unicode: a \\u escape encodes a lone surrogate")
    return obj, None
