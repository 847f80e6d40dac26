"""The dataset loader: every problem named by file, line and field; no partial loads."""
import json

import pytest
from click.testing import CliRunner

from patent_risk.cli.evaluate import main as evaluate_cli
from patent_risk.schemas.errors import DataError
from patent_risk.schemas.records import load_dataset

GOOD = {"id": "a", "patent_id": "P", "claim": "c", "elements": [{"id": "E1", "text": "t"}], "query": "q",
        "label": {"risk_level": "낮음", "matches": [{"element_id": "E1", "match": "미대응"}]}}


def _write(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_bytes(b"".join((x if isinstance(x, bytes) else (json.dumps(x, ensure_ascii=False) if not isinstance(x, str) else x).encode()) + b"\n" for x in lines))
    return p


def test_good_file_with_bom_and_blank_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n\n  \n" + json.dumps(dict(GOOD, id="b")).encode())
    data = load_dataset(p)
    assert [r.id for r in data.records] == ["a", "b"] and data.line_numbers == [1, 4]


@pytest.mark.parametrize("bad,field,needle", [
    ("{not json", "line", "not valid JSON"),
    (b"\xff\xfe{}", "line", "UTF-8"),
    ([1, 2], "line", "JSON object"),
    (dict(GOOD, id=""), "id", "at least 1"),
    ({k: v for k, v in GOOD.items() if k != "query"}, "query", "required"),
    (dict(GOOD, elements=[]), "elements", "at least 1"),
    (dict(GOOD, label={"risk_level": "중간", "matches": [{"element_id": "E1", "match": "대응"}]}), "label.risk_level", "'중간'"),
    (dict(GOOD, label={"risk_level": "낮음", "matches": [{"element_id": "E1", "match": "yes"}]}), "label.matches[0].match", "'yes'"),
    (dict(GOOD, label={"risk_level": "낮음", "matches": []}), "label.matches", "no match for element"),
    (dict(GOOD, elements=[{"id": "E1", "text": "t"}, {"id": "E1", "text": "u"}]), "elements", "duplicate element id"),
])
def test_bad_line_is_named_and_whole_file_refused(tmp_path, bad, field, needle):
    p = _write(tmp_path, [GOOD, bad])
    with pytest.raises(DataError) as e:
        load_dataset(p)
    first = str(e.value.problems[0])
    assert first.startswith(f"{p}:2: {field}: "), first
    assert needle in first


def test_duplicate_ids(tmp_path):
    p = _write(tmp_path, [GOOD, GOOD])
    with pytest.raises(DataError, match=r":2: id: duplicate id 'a' \(first on line 1\)"):
        load_dataset(p)


def test_skip_bad_reports_every_skipped_line(tmp_path):
    p = _write(tmp_path, [GOOD, "{", dict(GOOD, id="c"), dict(GOOD, id="d", elements=[])])
    data = load_dataset(p, skip_bad=True)
    assert [r.id for r in data.records] == ["a", "c"]
    assert [pr.line for pr in data.skipped] == [2, 4]


def test_skip_bad_counts_lines_not_problems(tmp_path):
    """Issue 28: two bad lines with four problems between them are two skipped lines, each named once."""
    bad_label = dict(GOOD, id="b", label={"risk_level": "x", "matches": [{"element_id": "Z9", "match": "y"}]})
    p = _write(tmp_path, [GOOD, bad_label, "{oops", dict(GOOD, id="c")])
    data = load_dataset(p, skip_bad=True)
    assert len(data.skipped) > 2 and data.skipped_lines()[0].startswith(f"{p}:2: ")
    result = CliRunner().invoke(evaluate_cli, ["validate", str(p), "--skip-bad"])
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if line.startswith("skipped: ")]
    assert [line.split(": ")[1] for line in skipped] == [f"{p}:2", f"{p}:3"], skipped
    assert "label.risk_level" in skipped[0] and "; " in skipped[0]
    assert "2 records" in result.output and "2 line(s) skipped" in result.output


def test_empty_file_is_an_error(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text("\n\n")
    with pytest.raises(DataError, match="no records"):
        load_dataset(p)


def test_extra_fields_and_meta_are_kept(tmp_path):
    p = _write(tmp_path, [dict(GOOD, meta={"boundary": 0.01}, source="x")])
    rec = load_dataset(p).records[0]
    assert rec.meta == {"boundary": 0.01} and rec.to_json()["source"] == "x"


def test_cli_validate_messages_and_exit_codes(tmp_path):
    bad = _write(tmp_path, [GOOD, "{oops", dict(GOOD, id="b", label={"risk_level": "x", "matches": []})])
    result = CliRunner().invoke(evaluate_cli, ["validate", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:2: line: not valid JSON" in result.output
    assert f"{bad}:3: label.risk_level:" in result.output
    assert "Traceback" not in result.output
    good = _write(tmp_path, [GOOD], "g.jsonl")
    ok = CliRunner().invoke(evaluate_cli, ["validate", str(good)])
    assert ok.exit_code == 0 and "1 records" in ok.output


def test_cli_validate_missing_file(tmp_path):
    result = CliRunner().invoke(evaluate_cli, ["validate", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 1 and "cannot read" in result.output and "Traceback" not in result.output


def test_demo_split_validates():
    result = CliRunner().invoke(evaluate_cli, ["validate", "data/demo/eval.jsonl"])
    assert result.exit_code == 0, result.output
