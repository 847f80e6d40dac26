"""Property tests: malformed input never loses a result (CONTRACT.md sections 1 and 3).

Each example builds a file of valid records, corrupts chosen lines in chosen ways (so the bad line
numbers are known) and lays the lines out with blank lines, CRLF or LF endings, an optional
byte-order mark and an optional trailing newline. Both loaders must then either load every valid
line, exactly as written, or refuse with a DataError / UserError that names `file:line: field:` for
every bad line; never another exception, never a silent drop. With skip_bad the dataset loader loads
the valid lines and reports exactly the bad line numbers. The results reader leaves out a torn last
line (no newline, not parseable) with a warning naming its line.
"""
from __future__ import annotations

import copy
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from patent_risk.evaluate.rundir import RESULTS, read_results
from patent_risk.schemas.errors import DataError, UserError
from patent_risk.schemas.labels import MATCH_LABELS, RISK_LEVELS
from patent_risk.schemas.records import load_dataset

# database=None: no .hypothesis/ directory in the repository; deadline=None: file I/O times vary.
FAST = settings(max_examples=35, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BOM = b"\xef\xbb\xbf"

# ---- valid records ----------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=10)  # any Unicode but lone surrogates
NONEMPTY = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=10)
EL_ID = st.text(string.ascii_uppercase + string.digits + "가-_", min_size=1, max_size=4)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)
NOT_STR = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.lists(st.integers(), max_size=2) | st.dictionaries(TEXT, st.integers(), max_size=2))
NOT_DICT = st.none() | st.booleans() | st.integers() | TEXT | st.lists(st.integers(), max_size=2)
NOT_LIST = st.none() | st.booleans() | st.integers() | TEXT | st.dictionaries(TEXT, st.integers(), max_size=2)
UNKNOWN_RISK = TEXT.filter(lambda s: s not in RISK_LEVELS)
UNKNOWN_MATCH = TEXT.filter(lambda s: s not in MATCH_LABELS)


@st.composite
def labels(draw, element_ids: list[str]) -> dict:
    order = draw(st.permutations(element_ids))
    return {"risk_level": draw(st.sampled_from(RISK_LEVELS)),
            "matches": [{"element_id": e, "match": draw(st.sampled_from(MATCH_LABELS))} for e in order]}


@st.composite
def records(draw, i: int) -> dict:
    """A valid dataset record (the shape of data/demo/eval.jsonl), id unique by ``i``."""
    ids = draw(st.lists(EL_ID, min_size=1, max_size=4, unique=True))
    rec = {"id": f"r{i}-{draw(TEXT)}", "patent_id": draw(NONEMPTY), "claim": draw(TEXT),
           "elements": [{"id": e, "text": draw(NONEMPTY)} for e in ids], "query": draw(TEXT)}
    if draw(st.integers(0, 3)):
        rec["label"] = draw(labels(ids))
    if draw(st.booleans()):
        rec["meta"] = draw(st.dictionaries(TEXT, JSON_VALUE, max_size=3))
    if draw(st.booleans()):
        rec["x_extra"] = draw(JSON_VALUE)  # fields beyond the contract's are kept
    return rec


@st.composite
def result_rows(draw, i: int) -> dict:
    """A valid results.jsonl row. The optional fields are kept as they are, whatever their type."""
    rec = draw(records(i))
    row = {"id": rec["id"], "gold": rec.get("label"), "raw_output": draw(TEXT),
           "finish_reason": draw(st.none() | st.sampled_from(["stop", "length", "abort"]))}
    if draw(st.booleans()):
        row.update(patent_id=rec["patent_id"], query=rec["query"], elements=rec["elements"])
    if draw(st.booleans()):
        row["meta"] = rec.get("meta", {})
    if draw(st.integers(0, 4)) == 0:  # lenient about what scoring does not need
        row[draw(st.sampled_from(["patent_id", "query", "meta", "x_extra"]))] = draw(JSON_VALUE)
    return row


# ---- corruptions: each returns (line bytes, the field the error must name, parseable) ----------
# parseable: whether a JSON parser reads the line at all (a torn last line of results.jsonl is one
# that is not); None where either outcome is acceptable.

Bad = tuple[bytes, str, "bool | None"]


def dumps(draw, obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=draw(st.booleans())).encode("utf-8")


def with_fragment(draw, obj: dict, key: str, fragment: bytes) -> bytes:
    """``obj`` serialized with the JSON value at ``key`` replaced by the raw bytes ``fragment``."""
    obj = dict(obj, **{key: "@@MARK@@"})
    return dumps(draw, obj).replace(b'"@@MARK@@"', fragment, 1)


def bad_truncated(draw, obj, string_key) -> Bad:
    raw = dumps(draw, obj)
    return raw[:draw(st.integers(1, len(raw) - 1))], "line", False


def bad_garbage(draw, obj, string_key) -> Bad:
    def unparseable(s: str) -> bool:
        if not s.strip(" \t\r\x0b\x0c"):
            return False
        try:
            json.loads(s)
        except ValueError:
            return True
        return False
    start = draw(st.sampled_from(["", "{", "[", "x", "'", '"', '{"id": ', "}", "NULL", "{'id': 'a'}"]))
    text = draw(st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n\x00\ufeff"), max_size=30)
                .map(lambda t: start + t).filter(unparseable))
    return text.encode("utf-8"), "line", False


def bad_not_object(draw, obj, string_key) -> Bad:
    value = draw(st.none() | st.booleans() | st.integers() | TEXT | st.lists(JSON_VALUE, max_size=3) | st.just([obj]))
    return dumps(draw, value), "line", True


def bad_bigint(draw, obj, string_key) -> Bad:  # beyond Python's int-string conversion limit
    return with_fragment(draw, obj, "x_big", b"9" * draw(st.integers(4301, 6000))), "line", False


def bad_deep(draw, obj, string_key) -> Bad:  # nested deeper than the parser's recursion limit
    depth = draw(st.integers(10_000, 100_000))  # far past any recursion limit (Hypothesis sets 2048)
    closed = draw(st.booleans())
    return with_fragment(draw, obj, "x_deep", b"[" * depth + (b"]" * depth if closed else b"")), "line", False


def bad_invalid_utf8(draw, obj, string_key) -> Bad:  # one stray byte anywhere never is UTF-8
    raw = dumps(draw, obj)
    at = draw(st.integers(0, len(raw)))
    byte = draw(st.sampled_from([b"\xff", b"\xfe", b"\xc3", b"\x80", b"\xbf", b"\xe0", b"\xf4"]))
    return raw[:at] + byte + raw[at:], "line", False


def bad_surrogate_bytes(draw, obj, string_key) -> Bad:  # UTF-8-encoded surrogate (CESU / WTF-8): not UTF-8
    return with_fragment(draw, obj, string_key, b'"a\xed\xa0\x80b"'), "line", None


def bad_lone_surrogate_escape(draw, obj, string_key) -> Bad:  # valid JSON syntax, not Unicode text
    esc = draw(st.sampled_from([b"\\ud800", b"\\uDBFF", b"\\udc00", b"\\uDFFFx", b"x\\ud83d"]))
    return with_fragment(draw, obj, string_key, b'"' + esc + b'"'), "line", True


def bad_bom_inside(draw, obj, string_key) -> Bad:  # a byte-order mark anywhere but at the file's start
    return BOM + dumps(draw, obj), "line", None


COMMON = {"truncated": bad_truncated, "garbage": bad_garbage, "not_object": bad_not_object, "bigint": bad_bigint,
          "deep": bad_deep, "invalid_utf8": bad_invalid_utf8, "surrogate_bytes": bad_surrogate_bytes,
          "lone_surrogate": bad_lone_surrogate_escape, "bom_inside": bad_bom_inside}


def _setter(obj: dict, path: list, value: Any = ..., delete: bool = False) -> None:
    target = obj
    for part in path[:-1]:
        target = target[part]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value


def _name(path: list) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out


def _ensure_label(draw, rec: dict) -> dict:
    if "label" not in rec:
        rec["label"] = draw(labels([e["id"] for e in rec["elements"]]))
    return rec["label"]


def ds_wrong_type(draw, rec, _key) -> Bad:
    """A wrong type, a missing required field, an empty id or an unknown nested key, for every field."""
    rec = copy.deepcopy(rec)
    n_el = len(rec["elements"])
    i = draw(st.integers(0, n_el - 1))
    label = _ensure_label(draw, rec) if draw(st.booleans()) else rec.get("label")
    j = draw(st.integers(0, len(label["matches"]) - 1)) if label else 0
    choices: list[tuple[list, st.SearchStrategy | None]] = [
        (["id"], NOT_STR | st.just("")), (["patent_id"], NOT_STR | st.just("")), (["claim"], NOT_STR),
        (["query"], NOT_STR), (["elements"], NOT_LIST | st.just([])), (["elements", i], NOT_DICT),
        (["elements", i, "id"], NOT_STR | st.just("")), (["elements", i, "text"], NOT_STR | st.just("")),
        (["elements", i, "x_unknown"], JSON_VALUE), (["meta"], st.booleans() | st.integers() | TEXT | st.lists(st.integers())),
        (["label"], st.booleans() | st.integers() | TEXT | st.lists(st.integers())),
        (["id"], None), (["patent_id"], None), (["claim"], None), (["elements"], None), (["query"], None),
        (["elements", i, "id"], None), (["elements", i, "text"], None),
    ]
    if label:
        choices += _label_choices("label", j) + [(["label", "x_unknown"], JSON_VALUE),
                                                 (["label", "matches", j, "x_unknown"], JSON_VALUE)]
    return _corrupt(draw, rec, choices)


def _label_choices(key: str, j: int) -> list[tuple[list, st.SearchStrategy | None]]:
    """Wrong types (or, with None, deletion) for the parts of a label: `label` in datasets, `gold` in results."""
    return [([key, "risk_level"], NOT_STR), ([key, "matches"], NOT_LIST), ([key, "matches", j], NOT_DICT),
            ([key, "matches", j, "element_id"], NOT_STR | st.just("")), ([key, "matches", j, "match"], NOT_STR),
            ([key, "risk_level"], None), ([key, "matches"], None),
            ([key, "matches", j, "element_id"], None), ([key, "matches", j, "match"], None)]


def _corrupt(draw, obj: dict, choices: list[tuple[list, st.SearchStrategy | None]]) -> Bad:
    """Give one drawn path a drawn wrong value, or delete it."""
    path, values = draw(st.sampled_from(choices))
    if values is None:
        _setter(obj, path, delete=True)
    else:
        _setter(obj, path, draw(values))
    return dumps(draw, obj), _name(path), True


def _unknown_label(draw, label: dict, obj: dict, key: str) -> Bad:
    if draw(st.booleans()):
        label["risk_level"] = draw(UNKNOWN_RISK)
        return dumps(draw, obj), f"{key}.risk_level", True
    j = draw(st.integers(0, len(label["matches"]) - 1))
    label["matches"][j]["match"] = draw(UNKNOWN_MATCH)
    return dumps(draw, obj), f"{key}.matches[{j}].match", True


def ds_unknown_label(draw, rec, _key) -> Bad:
    rec = copy.deepcopy(rec)
    return _unknown_label(draw, _ensure_label(draw, rec), rec, "label")


def ds_uncovered(draw, rec, _key) -> Bad:
    """Label matches that are not exactly one per element, or element ids that repeat."""
    rec = copy.deepcopy(rec)
    matches = _ensure_label(draw, rec)["matches"]
    ids = [e["id"] for e in rec["elements"]]
    how = draw(st.sampled_from(["missing", "extra", "repeated", "dup_element"]))
    if how == "missing":
        del matches[draw(st.integers(0, len(matches) - 1))]
    elif how == "extra":
        matches.insert(draw(st.integers(0, len(matches))),
                       {"element_id": draw(EL_ID.filter(lambda e: e not in ids)), "match": draw(st.sampled_from(MATCH_LABELS))})
    elif how == "repeated":
        matches.insert(draw(st.integers(0, len(matches))), dict(draw(st.sampled_from(matches))))
    else:
        rec["elements"].insert(draw(st.integers(0, len(ids))), dict(draw(st.sampled_from(rec["elements"]))))
        return dumps(draw, rec), "elements", True
    return dumps(draw, rec), "label.matches", True


def rr_wrong_type(draw, row, _key) -> Bad:
    """What scoring needs: every required key, its type, the gold label's shape; `elements` when given."""
    row = copy.deepcopy(row)
    gold = row["gold"]
    j = draw(st.integers(0, len(gold["matches"]) - 1)) if gold else 0
    choices: list[tuple[list, st.SearchStrategy | None]] = [
        (["id"], NOT_STR | st.just("")), (["raw_output"], NOT_STR), (["finish_reason"], NOT_STR.filter(lambda v: v is not None)),
        (["gold"], NOT_DICT.filter(lambda v: v is not None)),
        (["id"], None), (["gold"], None), (["raw_output"], None), (["finish_reason"], None),
        (["elements"], NOT_LIST.filter(lambda v: v is not None) | st.lists(NOT_DICT, min_size=1, max_size=2)
         | st.lists(st.fixed_dictionaries({"id": NOT_STR}), min_size=1, max_size=2)),
    ]
    if gold:
        choices += _label_choices("gold", j)
    return _corrupt(draw, row, choices)


def _ensure_gold(draw, row: dict) -> dict:
    if row["gold"] is None:
        ids = [e["id"] for e in row["elements"]] if "elements" in row else draw(st.lists(EL_ID, min_size=1, max_size=3, unique=True))
        row["gold"] = draw(labels(ids))
    return row["gold"]


def rr_unknown_label(draw, row, _key) -> Bad:
    row = copy.deepcopy(row)
    return _unknown_label(draw, _ensure_gold(draw, row), row, "gold")


def rr_uncovered(draw, row, _key) -> Bad:
    """Gold matches that repeat an element, or that do not cover the row's `elements` exactly."""
    row = copy.deepcopy(row)
    matches = _ensure_gold(draw, row)["matches"]
    if "elements" not in row or draw(st.booleans()):
        k = draw(st.integers(0, len(matches)))
        matches.insert(k, dict(draw(st.sampled_from(matches))))
        first = next(i for i, m in enumerate(matches) if m["element_id"] == matches[k]["element_id"])
        second = next(i for i, m in enumerate(matches) if m["element_id"] == matches[k]["element_id"] and i != first)
        return dumps(draw, row), f"gold.matches[{second}].element_id", True
    ids = [e["id"] for e in row["elements"]]
    how = draw(st.sampled_from(["missing", "extra", "dup_element"]))
    if how == "missing":
        del matches[draw(st.integers(0, len(matches) - 1))]
    elif how == "extra":
        matches.insert(draw(st.integers(0, len(matches))),
                       {"element_id": draw(EL_ID.filter(lambda e: e not in ids)), "match": draw(st.sampled_from(MATCH_LABELS))})
    else:
        row["elements"].insert(draw(st.integers(0, len(ids))), dict(draw(st.sampled_from(row["elements"]))))
        return dumps(draw, row), "elements", True
    return dumps(draw, row), "gold.matches", True


DATASET_BAD: dict[str, Callable] = {**COMMON, "wrong_type": ds_wrong_type, "unknown_label": ds_unknown_label,
                                    "uncovered": ds_uncovered, "duplicate_id": None}
RESULTS_BAD: dict[str, Callable] = {**COMMON, "wrong_type": rr_wrong_type, "unknown_label": rr_unknown_label,
                                    "uncovered": rr_uncovered, "duplicate_id": None}


# ---- files ------------------------------------------------------------------------------------

@dataclass
class Case:
    data: bytes
    good: list[tuple[int, dict]]  # (line number, object) of every valid line, in order
    bad: dict[int, tuple[str, str, "bool | None"]]  # line number -> (kind, field named, parseable)
    last: int  # the last line's number
    trailing_newline: bool
    kinds: list[str] = field(default_factory=list)
    needles: dict[int, str] = field(default_factory=dict)  # line number -> text its problem must contain


@st.composite
def files(draw, make: Callable, bad_kinds: dict[str, Callable], string_key: str, force: str | None = None,
          max_records: int = 5) -> Case:
    """Valid objects, some lines corrupted, laid out with blank lines, LF/CRLF, a BOM, a trailing newline or not.

    ``force`` names a corruption that at least one line gets (the others draw theirs, or none, at random).
    """
    n = draw(st.integers(0 if force is None else 2, max_records))
    forced = None if force is None else draw(st.integers(1, n - 1))  # line 1 may not take a duplicate id or a BOM
    lines: list[bytes] = []
    good: list[tuple[int, dict]] = []
    bad: dict[int, tuple[str, str, bool | None]] = {}
    needles: dict[int, str] = {}
    blank = st.sampled_from([b"", b" ", b"\t", b"  \t ", b"\r", b"\x0c"])
    for i in range(n):
        for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
            lines.append(draw(blank))
        obj = draw(make(i))
        line = len(lines) + 1
        if i == forced:
            kind = force
        elif force == "duplicate_id" and i == 0:
            kind = None
        else:
            kind = draw(st.none() | st.none() | st.sampled_from(sorted(bad_kinds)))
        if kind == "duplicate_id" and good:
            first_line, first = draw(st.sampled_from(good))
            lines.append(dumps(draw, dict(obj, id=first["id"])))
            bad[line] = (kind, "id", True)
            needles[line] = f"duplicate id {first['id']!r} (first on line {first_line})"
        elif kind is not None and kind != "duplicate_id" and not (kind == "bom_inside" and line == 1):
            raw, name, parseable = bad_kinds[kind](draw, obj, string_key)
            assert b"\n" not in raw and raw.strip()
            lines.append(raw)
            bad[line] = (kind, name, parseable)
        else:
            lines.append(dumps(draw, obj))
            good.append((line, obj))
    assert force is None or force in [k for k, _, _ in bad.values()]
    for _ in range(draw(st.integers(0, 2)) if draw(st.booleans()) else 0):
        lines.append(draw(blank))
    ending = draw(st.sampled_from(["lf", "crlf", "mixed"]))
    ends = [b"\r\n" if ending == "crlf" or (ending == "mixed" and draw(st.booleans())) else b"\n" for _ in lines]
    trailing = draw(st.booleans()) or not lines
    data = b"".join(x + e for x, e in zip(lines, ends))
    if not trailing:
        data = data[:-len(ends[-1])]
    if draw(st.booleans()):
        data = BOM + data
    return Case(data, good, bad, len(lines), trailing, [k for k, _, _ in bad.values()], needles)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("loaders")


def expected_record(obj: dict) -> dict:
    out = {"label": None, "meta": None, **obj}
    if out["label"] is not None:  # a label's matches may carry a reason (schema v2's); absent, it reads as None
        out["label"] = {**out["label"], "matches": [{"reason": None, **m} for m in out["label"]["matches"]]}
    return out


def count_kinds(case: Case) -> None:
    """Label the example by its corruptions (pytest --hypothesis-show-statistics shows the counts)."""
    for kind in sorted(set(case.kinds)) or ["no bad line"]:
        event(kind)
    event("no trailing newline" if not case.trailing_newline else "trailing newline")
    event("BOM" if case.data.startswith(BOM) else "no BOM")
    event("CRLF" if b"\r\n" in case.data else "LF only")


def assert_names_every_bad_line(err: DataError, path: str, bad: dict[int, tuple], text: str,
                                needles: dict[int, str] | None = None) -> None:
    """The error lists a problem on exactly the bad lines, each naming the file, line and expected field."""
    lines = {p.line for p in err.problems if p.line}
    assert lines == set(bad), (lines, bad, text[:2000])
    for n, (kind, name, _) in bad.items():
        on_line = [p for p in err.problems if p.line == n]
        assert all(p.file == path and p.message for p in on_line)
        assert any(p.field == name or p.field.startswith((name + ".", name + "[")) for p in on_line), (kind, name, on_line)
        for p in on_line:
            assert f"{path}:{n}: {p.field}: " in text
        if needles and n in needles:
            assert any(needles[n] in p.message for p in on_line), (needles[n], on_line)
    assert [p.line for p in err.problems if p.line] == sorted(p.line for p in err.problems if p.line)


# ---- the dataset loader -----------------------------------------------------------------------

@pytest.mark.parametrize("force", [None, *sorted(DATASET_BAD)])
@FAST
@given(data=st.data(), limit=st.none() | st.integers(-2, 9))
def test_dataset_loads_everything_or_names_every_bad_line(workdir, force, data, limit):
    case = data.draw(files(records, DATASET_BAD, "claim", force), "case")
    count_kinds(case)
    path = workdir / "d.jsonl"
    path.write_bytes(case.data)
    try:
        loaded = load_dataset(path, limit=limit)
    except DataError as e:
        assert limit is None or limit >= 1  # a bad limit is refused before the file is read
        if case.bad:
            assert_names_every_bad_line(e, str(path), case.bad, str(e), case.needles)
        else:
            assert not case.good and [p.line for p in e.problems] == [0] and str(path) in str(e)
        return
    except UserError as e:
        assert limit is not None and limit < 1 and "limit" in str(e)
        return
    assert not case.bad and case.good
    assert limit is None or limit >= 1
    want = case.good[:limit] if limit is not None else case.good
    assert loaded.line_numbers == [n for n, _ in want]
    assert [r.model_dump(mode="json") for r in loaded.records] == [expected_record(o) for _, o in want]
    assert loaded.skipped == []


@pytest.mark.parametrize("force", [None, *sorted(DATASET_BAD)])
@FAST
@given(data=st.data())
def test_dataset_skip_bad_loads_the_good_and_reports_exactly_the_bad(workdir, force, data):
    case = data.draw(files(records, DATASET_BAD, "claim", force), "case")
    count_kinds(case)
    path = workdir / "s.jsonl"
    path.write_bytes(case.data)
    try:
        loaded = load_dataset(path, skip_bad=True)
    except DataError as e:
        assert not case.good, str(e)
        assert e.problems[-1].line == 0 and "no records" in e.problems[-1].message
        assert_names_every_bad_line(e, str(path), case.bad, str(e), case.needles)
        return
    assert loaded.line_numbers == [n for n, _ in case.good]
    assert [r.model_dump(mode="json") for r in loaded.records] == [expected_record(o) for _, o in case.good]
    assert {p.line for p in loaded.skipped} == set(case.bad)
    assert_names_every_bad_line(DataError(loaded.skipped), str(path), case.bad, "\n".join(map(str, loaded.skipped)), case.needles)


# ---- the results reader -----------------------------------------------------------------------

@pytest.mark.parametrize("force", [None, *sorted(RESULTS_BAD)])
@FAST
@given(data=st.data())
def test_results_load_everything_or_name_every_bad_line(workdir, force, data):
    case = data.draw(files(result_rows, RESULTS_BAD, "raw_output", force), "case")
    count_kinds(case)
    run = workdir / "run"
    run.mkdir(exist_ok=True)
    path = run / RESULTS
    path.write_bytes(case.data)
    bad = dict(case.bad)
    torn = None
    last = bad.get(case.last)
    if last is not None and not case.trailing_newline and last[2] is not True:
        torn = case.last  # not parseable, no newline: left out with a warning (or, where parseable is None, maybe refused)
    try:
        results = read_results(run)
    except DataError as e:
        if torn is not None:
            if any(p.line == torn for p in e.problems):
                assert last[2] is None, (last, str(e))  # an unparseable last line without newline is torn, not an error
            else:
                del bad[torn]
        if bad:
            assert_names_every_bad_line(e, str(path), bad, str(e), case.needles)
        else:
            assert not case.good and [p.line for p in e.problems] == [0] and str(path) in str(e)
        return
    if torn is not None:
        del bad[torn]
        assert any(w.startswith(f"{path}:{torn}: torn last line") for w in results.warnings), results.warnings
    assert not bad and case.good
    assert results.line_numbers == [n for n, _ in case.good]
    assert results.rows == [o for _, o in case.good]
    assert len(results.warnings) == (torn is not None)


# ---- very long lines, empty files ----------------------------------------------------------------

LONG = settings(max_examples=6, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@LONG
@given(size=st.integers(1_000_000, 5_000_000), where=st.integers(1, 3),
       how=st.sampled_from(["good", "truncated", "bad_label_at_end", "invalid_utf8_at_end"]), crlf=st.booleans())
def test_very_long_lines(workdir, size, where, how, crlf):
    ds = [{"id": f"r{i}", "patent_id": "P", "claim": "c", "elements": [{"id": "E1", "text": "t"}], "query": "q",
           "label": {"risk_level": "낮음", "matches": [{"element_id": "E1", "match": "미대응"}]}} for i in range(3)]
    ds[where - 1]["claim"] = "가" * (size // 3)  # 3 bytes each
    rows = [{"id": r["id"], "gold": r["label"], "raw_output": r["claim"], "finish_reason": "stop"} for r in ds]
    for objs, load, name in ((ds, load_dataset, "long.jsonl"), (rows, read_results, "r")):
        lines = [json.dumps(o, ensure_ascii=False).encode() for o in objs]
        if how == "truncated":
            lines[where - 1] = lines[where - 1][:-2]
        elif how == "bad_label_at_end":
            lines[where - 1] = lines[where - 1].replace("미대응".encode(), "모름".encode())
        elif how == "invalid_utf8_at_end":
            lines[where - 1] = lines[where - 1][:-3] + b"\xff" + lines[where - 1][-3:]
        path = workdir / name
        if load is read_results:
            path.mkdir(exist_ok=True)
            path = path / RESULTS
        path.write_bytes(b"".join(x + (b"\r\n" if crlf else b"\n") for x in lines))
        if how == "good":
            loaded = load(path.parent if load is read_results else path)
            got = loaded.records if load is load_dataset else loaded.rows
            assert len(got) == 3 and len((got[where - 1].claim if load is load_dataset else got[where - 1]["raw_output"])) == size // 3
            continue
        with pytest.raises(DataError) as e:
            load(path.parent if load is read_results else path)
        assert [p.line for p in e.value.problems] == [where]
        assert str(e.value).startswith(f"{path}:{where}: ")
        assert len(str(e.value)) < 2000  # the problem is named, the line is not echoed


@settings(max_examples=60, deadline=None, database=None)
@given(parts=st.lists(st.sampled_from([b"", b" ", b"\t", b"\r", b"  \t", b"\x0c"]), max_size=5),
       bom=st.booleans(), ending=st.sampled_from([b"\n", b"\r\n"]), trailing=st.booleans())
def test_empty_or_blank_files_are_refused_by_name(workdir, parts, bom, ending, trailing):
    data = ending.join(parts) + (ending if trailing and parts else b"")
    data = (BOM if bom else b"") + data
    path = workdir / "empty.jsonl"
    path.write_bytes(data)
    for skip_bad in (False, True):
        with pytest.raises(DataError) as e:
            load_dataset(path, skip_bad=skip_bad)
        assert [str(p) for p in e.value.problems] == [f"{path}: no records (the file is empty or every line is bad)"]
    run = workdir / "empty-run"
    run.mkdir(exist_ok=True)
    (run / RESULTS).write_bytes(data)
    with pytest.raises(DataError) as e:
        read_results(run)
    assert [str(p) for p in e.value.problems] == [f"{run / RESULTS}: no results (the file is empty); nothing to report"]
