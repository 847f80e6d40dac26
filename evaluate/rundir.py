"""Reading a run directory (docs/formats.md section 3): `results.jsonl` rows and the optional `run.json`.

Reading is strict about what scoring needs and lenient about the rest: every row must carry `id`,
`gold`, `raw_output` and `finish_reason`; the optional fields are kept as they are. A torn last line
(no trailing newline and not parseable, as a crash mid-write leaves it) is reported as a warning and
left out; any other bad line refuses the whole file, with every problem listed.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from patent_risk.schemas.errors import DataError, Problem, UserError
from patent_risk.schemas.jsonl import BOM, decode_line, read_bytes
from patent_risk.schemas.labels import MATCH_LABELS, RISK_LEVELS
from patent_risk.schemas.output import schema_names

RESULTS = "results.jsonl"
RUN_JSON = "run.json"
REQUIRED_KEYS = ("id", "gold", "raw_output", "finish_reason")
DEFAULT_SCHEMA = "v1"


@dataclass
class Run:
    """One run directory, read and checked.

    ``info`` is the parsed `run.json` (None when the directory has none); ``schema_name`` the target
    schema the outputs are scored against; ``line_numbers[i]`` the line of ``rows[i]`` in results.jsonl;
    ``results_sha256`` the hash of the results that were read (a torn last line excluded).
    """

    name: str
    path: Path
    info: dict[str, Any] | None
    rows: list[dict[str, Any]]
    schema_name: str
    line_numbers: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    results_sha256: str = ""


def results_path(path: str | Path) -> Path:
    """The results file of a run directory (or ``path`` itself when it names the file)."""
    p = Path(path)
    return p if p.name == RESULTS and not p.is_dir() else p / RESULTS


def run_name(path: str | Path) -> str:
    """A run's name: its directory's name."""
    p = Path(path)
    return p.name if p.name not in ("", ".", "..") else p.resolve().name


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small acyclic objects (parsed JSON rows):
    its generational passes otherwise dominate the time of reading large results files."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _torn_tail(data: bytes) -> int | None:
    """Offset where a torn last line starts, or None when the file ends cleanly.

    A last line is torn when the file does not end with a newline and that line is not valid JSON.
    """
    if not data or data.endswith(b"\n"):
        return None
    start = data.rfind(b"\n") + 1
    tail = data[start:]
    if not tail.strip():
        return None
    try:
        json.loads(tail)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        return start
    return None


def repair_torn_tail(path: str | Path) -> bool:
    """Make ``results.jsonl`` safe to append to; True when the file was changed.

    A torn last line is cut off; a complete last line that lacks its newline gets one (otherwise the
    next appended row would be glued to it). ``path`` is a run directory or its results file.
    """
    target = results_path(path)
    if not target.exists():
        return False
    data = target.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    start = _torn_tail(data)
    if start is not None:
        os.truncate(target, start)
    elif data.strip():
        with open(target, "ab") as f:
            f.write(b"\n")
    else:
        return False
    return True


def _check_gold(gold: Any, where: str, line: int) -> list[Problem]:
    if gold is None:
        return []
    if not isinstance(gold, dict):
        return [Problem(where, line, "gold", f"expected an object or null, got {type(gold).__name__}")]
    problems = []
    risk = gold.get("risk_level")
    if risk not in RISK_LEVELS:
        problems.append(Problem(where, line, "gold.risk_level", f"{risk!r} is not allowed; expected one of {', '.join(RISK_LEVELS)}"))
    matches = gold.get("matches")
    if not isinstance(matches, list):
        return problems + [Problem(where, line, "gold.matches", "expected a list of {element_id, match}")]
    seen: set[str] = set()
    for i, m in enumerate(matches):
        f = f"gold.matches[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("element_id"), str) or not m["element_id"]:
            problems.append(Problem(where, line, f"{f}.element_id", "expected a non-empty string"))
            continue
        if m["element_id"] in seen:
            problems.append(Problem(where, line, f"{f}.element_id", f"{m['element_id']!r} repeats (one match per element)"))
        seen.add(m["element_id"])
        if m.get("match") not in MATCH_LABELS:
            problems.append(Problem(where, line, f"{f}.match", f"{m.get('match')!r} is not allowed; expected one of {', '.join(MATCH_LABELS)}"))
    return problems


def _check_row(row: Any, where: str, line: int) -> list[Problem]:
    if not isinstance(row, dict):
        return [Problem(where, line, "line", f"expected a JSON object, got {type(row).__name__}")]
    missing = [k for k in REQUIRED_KEYS if k not in row]
    problems = [Problem(where, line, k, "missing (required in every row)") for k in missing]
    if "id" not in missing and (not isinstance(row["id"], str) or not row["id"]):
        problems.append(Problem(where, line, "id", "expected a non-empty string"))
    if "raw_output" not in missing and not isinstance(row["raw_output"], str):
        problems.append(Problem(where, line, "raw_output", f"expected a string, got {type(row['raw_output']).__name__}"))
    if "finish_reason" not in missing and row["finish_reason"] is not None and not isinstance(row["finish_reason"], str):
        problems.append(Problem(where, line, "finish_reason", "expected a string or null"))
    gold_problems = [] if "gold" in missing else _check_gold(row["gold"], where, line)
    problems.extend(gold_problems)
    elements = row.get("elements")
    if elements is not None:
        if not isinstance(elements, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), str) for e in elements):
            problems.append(Problem(where, line, "elements", "expected a list of {id, text}"))
        else:
            problems.extend(_check_coverage(elements, None if gold_problems else row.get("gold"), where, line))
    return problems


def _check_coverage(elements: list[dict[str, Any]], gold: dict[str, Any] | None, where: str, line: int) -> list[Problem]:
    """The row's element ids are unique and its gold has exactly one match per element (docs/formats.md section 1).

    ``gold`` is None when the row has none or its own check failed; its match ids are then known to be unique.
    """
    ids = [e["id"] for e in elements]
    got = None if gold is None else [m["element_id"] for m in gold["matches"]]
    if got == ids:  # the usual row: matches in element order (unique, as gold's own check found)
        return []
    if len(set(ids)) != len(ids):
        return [Problem(where, line, "elements", f"duplicate element id(s) {sorted({i for i in ids if ids.count(i) > 1})}")]
    if got is None or set(got) == set(ids):
        return []
    parts = []
    if missing := [i for i in ids if i not in got]:
        parts.append(f"no match for element(s) {missing}")
    if extra := [i for i in got if i not in ids]:
        parts.append(f"match for unknown element(s) {extra}")
    return [Problem(where, line, "gold.matches", "; ".join(parts) + " (exactly one per element of `elements` is required)")]


@dataclass
class Results:
    """The rows of a results file, their line numbers, warnings (a torn last line) and the sha256 of what was read."""

    rows: list[dict[str, Any]]
    line_numbers: list[int]
    warnings: list[str]
    sha256: str


def _parse_lines(data: bytes, where: str, rows: list[dict[str, Any]], numbers: list[int], problems: list[Problem]) -> None:
    """Parse and check every non-blank line of ``data``, appending good rows and the problems of bad ones."""
    first_line: dict[str, int] = {}
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        row, problem = decode_line(where, n, raw)
        if problem is not None:
            problems.append(problem)
            continue
        row_problems = _check_row(row, where, n)
        if not row_problems:
            rid = row["id"]
            if rid in first_line:
                row_problems = [Problem(where, n, "id", f"duplicate id {rid!r} (first on line {first_line[rid]})")]
            else:
                first_line[rid] = n
        if row_problems:
            problems.extend(row_problems)
            continue
        rows.append(row)
        numbers.append(n)


def read_results(path: str | Path) -> Results:
    """Read and check a results file (a run directory or its results.jsonl).

    Raises DataError listing every bad line, missing key and duplicate id.
    """
    target = results_path(path)
    where = str(target)
    data = read_bytes(target)
    warnings: list[str] = []
    torn = _torn_tail(data)
    if torn is not None:
        torn_line = data.count(b"\n", 0, torn) + 1
        warnings.append(f"{where}:{torn_line}: torn last line ({len(data) - torn} bytes, no newline, not JSON) left out, "
                        "as a run interrupted mid-write leaves it; resuming the run repairs it")
        data = data[:torn]
    digest = hashlib.sha256(data).hexdigest()
    data = data.removeprefix(BOM)
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    problems: list[Problem] = []
    with gc_paused():
        _parse_lines(data, where, rows, numbers, problems)
    if problems:
        raise DataError(problems, hint=f"{where}: refused ({len(problems)} problem(s)); every row needs "
                                       f"{', '.join(REQUIRED_KEYS)} (gold may be null) and a unique id")
    if not rows:
        raise DataError([Problem(where, 0, "", "no results (the file is empty); nothing to report")])
    return Results(rows, numbers, warnings, digest)


def _schema_of(info: dict[str, Any], where: str, warnings: list[str]) -> str:
    schema = info.get("schema")
    if schema is None:
        warnings.append(f"{where}: schema: missing; outputs are scored against {DEFAULT_SCHEMA}")
        return DEFAULT_SCHEMA
    name = schema.get("name") if isinstance(schema, dict) else schema
    if not isinstance(name, str) or name not in schema_names():
        raise UserError(f"{where}: schema.name: unknown schema {name!r}; known schemas: {', '.join(schema_names())}")
    return name


def read_info(path: str | Path) -> dict[str, Any] | None:
    """The parsed `run.json` of a run directory, or None when there is none."""
    target = Path(path) / RUN_JSON
    if not target.exists():
        return None
    try:
        info = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError([Problem(str(target), 0, "", f"not readable JSON: {e}")]) from None
    if not isinstance(info, dict):
        raise DataError([Problem(str(target), 0, "", f"expected a JSON object, got {type(info).__name__}")])
    return info


def read_run(path: str | Path) -> Run:
    """Read and check one run directory. Raises UserError / DataError with every problem found."""
    p = Path(path)
    if not (p / RESULTS).is_file():
        raise UserError(f"{p}: not a run directory (no {RESULTS}); give the directory `evaluate batch --out` wrote")
    warnings: list[str] = []
    info = read_info(p)
    schema_name = DEFAULT_SCHEMA if info is None else _schema_of(info, str(p / RUN_JSON), warnings)
    results = read_results(p)
    return Run(run_name(p), p, info, results.rows, schema_name, results.line_numbers,
               warnings + results.warnings, results.sha256)


def write_run(path: str | Path, rows: Sequence[dict[str, Any]], info: dict[str, Any] | None = None) -> Path:
    """Write a run directory as it is read here: ``results.jsonl`` from ``rows`` and, when given, ``run.json``
    (benchmarks and tests build synthetic runs with it; `evaluate batch` writes its own incrementally)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    with open(p / RESULTS, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if info is not None:
        (p / RUN_JSON).write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")
    return p
