"""The dataset contract (docs/formats.md section 1): one record per JSONL line, and its loader."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import DataError, Problem, UserError
from .jsonl import BOM, decode_line, read_bytes
from .labels import MatchLabel, RiskLevel


class Element(BaseModel):
    """One element of a claim, as the claim was split for review."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, description="Element id, unique within the record, e.g. E1.")
    text: str = Field(min_length=1, description="The element's wording.")


class ElementMatch(BaseModel):
    """Whether the product meets one claim element."""

    model_config = ConfigDict(extra="forbid")
    element_id: str = Field(min_length=1)
    match: MatchLabel
    reason: str | None = Field(None, description="Optional: why, in a few words (what a schema with reasons, v2, is trained to write).")


class Label(BaseModel):
    """The gold answer for a record."""

    model_config = ConfigDict(extra="forbid")
    risk_level: RiskLevel
    matches: list[ElementMatch]


class Record(BaseModel):
    """One dataset line. Fields beyond the contract's are kept, never dropped."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1)
    patent_id: str = Field(min_length=1)
    claim: str
    elements: list[Element] = Field(min_length=1)
    query: str
    label: Label | None = None
    meta: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _ids_agree(self) -> "Record":
        ids = [e.id for e in self.elements]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"elements: duplicate element id(s) {dup}")
        if self.label is not None:
            got = [m.element_id for m in self.label.matches]
            missing = [i for i in ids if i not in got]
            extra = [i for i in got if i not in ids]
            repeated = sorted({i for i in got if got.count(i) > 1})
            parts = []
            if missing:
                parts.append(f"no match for element(s) {missing}")
            if extra:
                parts.append(f"match for unknown element(s) {extra}")
            if repeated:
                parts.append(f"more than one match for {repeated}")
            if parts:
                raise ValueError("label.matches: " + "; ".join(parts) + " (exactly one per element is required)")
        return self

    @property
    def element_ids(self) -> list[str]:
        return [e.id for e in self.elements]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def with_own_element_ids(record: Record) -> Record:
    """The record with each element id prefixed by the record's id (``E1`` -> ``<id>-E1``), in the label
    too: no two records then share an output schema, as for users whose element ids differ from claim to
    claim (1a, 구성요소1, ...). For measuring what one schema per record costs to compile
    (`evaluate bench --own-ids`); the claim and query texts are left as they are."""
    rename = {e.id: f"{record.id}-{e.id}" for e in record.elements}
    data = record.to_json()
    data["elements"] = [{**e, "id": rename[e["id"]]} for e in data["elements"]]
    if data.get("label"):
        data["label"]["matches"] = [{**m, "element_id": rename[m["element_id"]]} for m in data["label"]["matches"]]
    return Record.model_validate(data)


@dataclass
class LoadedDataset:
    path: Path
    records: list[Record]
    line_numbers: list[int]
    skipped: list[Problem] = field(default_factory=list)

    def skipped_lines(self) -> list[str]:
        """One line of text per line left out by skip_bad (a bad line may have several problems): the file and
        line once, then every problem found on it."""
        by_line: dict[str, list[str]] = {}
        for p in sorted(self.skipped, key=lambda p: p.line):
            by_line.setdefault(p.where, []).append(p.what)
        return [f"{where}: {'; '.join(whats)}" for where, whats in by_line.items()]


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _problems_from_validation(path: str, line: int, err: ValidationError) -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = _field_path(tuple(p for p in e["loc"] if p not in ("function-after[_ids_agree(), Record]",)))
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
            if ": " in msg and not loc:
                loc, msg = msg.split(": ", 1)
        if e["type"] == "literal_error":
            msg = f"{e.get('input')!r} is not allowed; {msg[len('Input should be '):] if msg.startswith('Input should be ') else msg}"
        problems.append(Problem(path, line, loc or "record", msg))
    return problems


def parse_line(path: str, line_no: int, raw: bytes) -> tuple[Record | None, list[Problem]]:
    """Parse one JSONL line into a Record, or return the problems found."""
    if line_no == 1 and raw.startswith(BOM):
        raw = raw[len(BOM):]
    obj, problem = decode_line(path, line_no, raw)
    if problem is not None:
        return None, [problem]
    if not isinstance(obj, dict):
        return None, [Problem(path, line_no, "line", f"expected a JSON object, got {type(obj).__name__}")]
    try:
        return Record.model_validate(obj), []
    except ValidationError as e:
        return None, _problems_from_validation(path, line_no, e)


def load_dataset(path: str | Path, *, skip_bad: bool = False, limit: int | None = None) -> LoadedDataset:
    """Load and validate a dataset. Refuses the whole file on any problem unless skip_bad.

    With skip_bad, bad lines are left out and each is listed in ``skipped``.
    """
    if limit is not None and limit < 1:  # a negative slice would drop records from the end, silently
        raise UserError(f"limit must be 1 or more, not {limit}")
    p = Path(path)
    name = str(path)
    data = read_bytes(p).removeprefix(BOM)
    records: list[Record] = []
    numbers: list[int] = []
    problems: list[Problem] = []
    first_seen: dict[str, int] = {}
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        rec, probs = parse_line(name, n, raw.rstrip(b"\r"))
        if rec is not None and rec.id in first_seen:
            probs = [Problem(name, n, "id", f"duplicate id {rec.id!r} (first on line {first_seen[rec.id]})")]
            rec = None
        if rec is None:
            problems.extend(probs)
            continue
        first_seen[rec.id] = n
        records.append(rec)
        numbers.append(n)
    if problems and not skip_bad:
        raise DataError(problems, hint=f"{name}: refused ({len(problems)} problem(s)); fix them or pass --skip-bad to leave those lines out")
    if not records:
        raise DataError(problems + [Problem(name, 0, "", "no records (the file is empty or every line is bad)")])
    if limit is not None:
        records, numbers = records[:limit], numbers[:limit]
    return LoadedDataset(p, records, numbers, skipped=problems)
