"""`evaluate baseline`: the majority-class baseline learnt from the training split alone, written as a run
directory the report scores and pairs like a model's run (issue 16, first step)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from patent_risk.evaluate.baseline import majority_labels, write_majority_run
from patent_risk.evaluate.report import write_report
from patent_risk.schemas.errors import UserError
from patent_risk.schemas.records import load_dataset

from .conftest import EVAL, ROOT, TRAIN, check_contract


def _lines(path, n=None):
    return path.read_text(encoding="utf-8").splitlines()[:n]


def test_the_answer_is_the_training_splits_majority_not_the_eval_splits(tmp_path):
    # A training split whose majority differs from the eval split's: only 높음 records.
    high = [json.loads(x) for x in _lines(TRAIN) if json.loads(x)["label"]["risk_level"] == "높음"][:5]
    for rec in high:
        for m in rec["label"]["matches"]:
            m["match"] = "미대응"
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in high), encoding="utf-8")
    out = tmp_path / "maj"
    info = write_majority_run(str(train), str(EVAL), str(out))
    assert info["engine"]["answer"] == {"risk_level": "높음", "match": "미대응"}
    assert check_contract("run", out).returncode == 0
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    records = load_dataset(EVAL).records
    assert [r["id"] for r in rows] == [r.id for r in records]
    for row, rec in zip(rows, records):
        answer = json.loads(row["raw_output"])
        assert answer["risk_level"] == "높음"
        assert [m["element_id"] for m in answer["matches"]] == rec.element_ids
        assert {m["match"] for m in answer["matches"]} == {"미대응"}
    # The report scores it as a run: risk accuracy is the eval split's share of 높음.
    write_report([out], tmp_path / "rep")
    run = json.loads((tmp_path / "rep" / "metrics.json").read_text(encoding="utf-8"))["runs"]["maj"]
    assert run["risk_accuracy"]["count"] == sum(r.label.risk_level == "높음" for r in records)
    assert run["risk_accuracy"]["total"] == len(records) and run["json_valid"]["rate"] == 1.0
    assert run["match_accuracy"]["count"] == sum(m.match == "미대응" for r in records for m in r.label.matches)


def test_majority_ties_follow_the_vocabulary_order():
    recs = load_dataset(TRAIN).records
    one_each = [next(r for r in recs if r.label.risk_level == lab) for lab in ("낮음", "높음")]
    assert majority_labels(one_each)["risk_level"] == "높음"  # 높음 comes first in RISK_LEVELS


def test_refusals_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="share"):
        write_majority_run(str(EVAL), str(EVAL), str(tmp_path / "a"))
    with pytest.raises(UserError, match="without reasons only"):
        write_majority_run(str(TRAIN), str(EVAL), str(tmp_path / "b"), "v2")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.jsonl").write_text("x\n")
    with pytest.raises(UserError, match="not empty"):
        write_majority_run(str(TRAIN), str(EVAL), str(tmp_path / "c"))


def test_cli_writes_it_and_says_what_it_answered(tmp_path):
    done = subprocess.run([sys.executable, "-m", "patent_risk.cli.evaluate", "baseline", "--train", str(TRAIN), "--data", str(EVAL),
                           "--out", str(tmp_path / "maj")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "147 samples answered risk_level 낮음, every element 대응" in done.stdout
