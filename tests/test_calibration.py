"""ECE, Brier score and risk-coverage against values computed by hand on small tables (evaluate.calibration)."""
from __future__ import annotations

import json

import pytest

from patent_risk.evaluate.calibration import brier, coverage_at_accuracy, ece, risk_coverage


def test_ece_by_hand():
    # bins of 0.1: {0.95, 0.92} -> bin 9 (mean 0.935, accuracy 1/2); {0.55} -> bin 5 (accuracy 1); {1.0} -> bin 9
    conf, ok = [0.95, 0.92, 0.55, 1.0], [True, False, True, True]
    value, table = ece(conf, ok)
    b9 = (0.95 + 0.92 + 1.0) / 3
    expected = 3 / 4 * abs(2 / 3 - b9) + 1 / 4 * abs(1.0 - 0.55)
    assert value == pytest.approx(expected)
    assert [r["n"] for r in table] == [0, 0, 0, 0, 0, 1, 0, 0, 0, 3] and table[9]["accuracy"] == pytest.approx(2 / 3)
    assert ece([], []) == (None, [])
    assert ece([0.8, 0.8, 0.8, 0.8, 0.8], [True, True, True, True, False])[0] == pytest.approx(0.0)  # calibrated


def test_brier_by_hand():
    probs = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]
    gold = [0, 1]
    # (0.09 + 0.04 + 0.01) and (0.01 + 0.81 + 0.64)
    assert brier(probs, gold) == pytest.approx((0.14 + 1.46) / 2)
    assert brier([[1 / 3] * 3], [2]) == pytest.approx(2 / 3)
    assert brier([], []) is None


def test_risk_coverage_and_aurc_by_hand():
    conf, ok = [0.9, 0.6, 0.8, 0.7], [True, False, True, False]
    cov, risk, aurc = risk_coverage(conf, ok)
    # order 0.9 (ok), 0.8 (ok), 0.7 (wrong), 0.6 (wrong): error 0, 0, 1/3, 2/4
    assert cov == [0.25, 0.5, 0.75, 1.0] and risk == pytest.approx([0, 0, 1 / 3, 0.5])
    assert aurc == pytest.approx((0 + 0 + 1 / 3 + 0.5) / 4)
    flat = risk_coverage([0.5] * 4, [False, True, True, True])[2]  # a constant confidence ranks nothing
    assert flat == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    rule = coverage_at_accuracy(conf, ok, 0.95)
    assert rule == {"accuracy": 0.95, "coverage": 0.5, "kept": 2, "threshold": 0.8}
    assert coverage_at_accuracy(conf, ok, 0.5)["kept"] == 4
    assert coverage_at_accuracy([0.9], [False], 0.9)["threshold"] is None


def test_a_runs_calibration_reads_its_rows_decisions_against_gold():
    from patent_risk.evaluate.calibration import run_calibration

    def row(risk, gold_risk, p_risk, match, gold_match, p_match):
        return {"gold": {"risk_level": gold_risk, "matches": [{"element_id": "E1", "match": gold_match}]},
                "label_probs": {"risk_level": {"label": risk, "probs": p_risk, "mass": 1.0},
                                "matches": [{"element_id": "E1", "label": match, "probs": p_match, "mass": 0.9}]}}
    rows = [row("높음", "높음", {"높음": 0.9, "애매": 0.05, "낮음": 0.05}, "대응", "대응", {"대응": 0.8, "판단불가": 0.1, "미대응": 0.1}),
            row("낮음", "애매", {"높음": 0.1, "애매": 0.3, "낮음": 0.6}, "대응", "미대응", {"대응": 0.5, "판단불가": 0.0, "미대응": 0.5}),
            {"gold": None, "label_probs": {"missing": "the answer is not valid JSON: no decision point"}},
            {"gold": {"risk_level": "높음", "matches": []},
             "label_probs": {"risk_level": {"label": "높음", "unread": "the label does not begin a token"}, "matches": []}},
            {"gold": {"risk_level": "높음", "matches": []}}]  # a row from before label probabilities
    cal = run_calibration(rows)
    assert (cal["rows_with_probabilities"], cal["rows_without_decision_points"], cal["decisions_unread"]) == (3, 1, 1)
    risk = cal["risk_level"]
    assert risk["decisions"] == 2 and risk["accuracy"] == 0.5 and risk["mean_confidence"] == pytest.approx(0.75)
    assert risk["brier"] == pytest.approx(((0.01 + 0.0025 + 0.0025) + (0.01 + 0.49 + 0.36)) / 2)
    assert risk["ece"] == pytest.approx(0.5 * abs(1 - 0.9) + 0.5 * abs(0 - 0.6))
    assert risk["aurc"] == pytest.approx((0 + 0.5) / 2)
    assert risk["keep_at_accuracy"][0] == {"accuracy": 0.95, "coverage": 0.5, "kept": 1, "threshold": 0.9}
    assert cal["match"]["decisions"] == 2
    assert run_calibration([{"gold": None}]) is None  # no probabilities at all: nothing to say


def _dev_rows(n: int = 40, seed: int = 0):
    """An over-confident model on a dev split: it writes its argmax with probability 0.97, right 70% of the time;
    gold 애매 cases it calls 낮음 with P(애매) 0.02-0.4."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        gold = ("높음", "애매", "낮음")[i % 3]
        right = rng.random() < 0.7
        written = gold if right and gold != "애매" else ("낮음" if gold == "애매" else ("애매" if gold == "높음" else "높음"))
        if written == "애매":
            probs = {"높음": 0.015, "애매": 0.97, "낮음": 0.015}
        else:  # the written label far ahead, 애매 second
            p_amb = 0.02 + 0.38 * rng.random()
            other = next(lab for lab in ("높음", "낮음") if lab != written)
            probs = {written: 0.97 - p_amb / 2, "애매": p_amb, other: 0.03 - p_amb / 2 if p_amb < 0.06 else 0.0}
            probs[written] = 1.0 - probs["애매"] - probs[other]
        raw = json.dumps({"risk_level": written, "matches": [{"element_id": "E1", "match": "대응"}]}, ensure_ascii=False)
        rows.append({"id": f"d{i}", "query": f"dev query {i}", "elements": [{"id": "E1", "text": "x"}],
                     "raw_output": raw, "finish_reason": "stop",
                     "gold": {"risk_level": gold, "matches": [{"element_id": "E1", "match": "대응"}]},
                     "label_probs": {"risk_level": {"label": written, "probs": probs, "mass": 1.0},
                                     "matches": [{"element_id": "E1", "label": "대응",
                                                  "probs": {"대응": 0.8, "판단불가": 0.1, "미대응": 0.1}, "mass": 1.0}]}})
    return rows


def test_calibrate_softens_an_overconfident_model_and_the_rule_is_applied_elsewhere_not_on_its_own_records(tmp_path):
    from patent_risk.evaluate import calibrate
    from patent_risk.schemas.errors import UserError

    dev = _dev_rows()
    doc = calibrate.fit(dev, accuracy=0.9, ambiguous_recall=0.8)
    risk = doc["fields"]["risk_level"]
    assert risk["temperature"] > 1.0 and risk["nll_after"] < risk["nll_before"]  # over-confident: softened
    amb = risk["ambiguous"]
    assert amb["threshold"] is not None and amb["recall"] >= 0.8 and amb["recall_written"] == 0.0
    assert doc["fields"]["match"]["decisions"] == 40 and len(doc["dev_records"]) == 40
    calibrate.write(doc, tmp_path / "cal.json")
    loaded = calibrate.load(tmp_path / "cal.json")

    other = [{**r, "query": r["query"].replace("dev", "eval")} for r in _dev_rows(seed=1)]
    applied = calibrate.apply(loaded, other, "eval", "cal.json")
    assert applied["risk_level"]["temperature"] == risk["temperature"]
    assert applied["risk_level"]["ambiguous_rule"]["recall"] >= applied["risk_level"]["ambiguous_rule"]["recall_written"]
    with pytest.raises(UserError, match=r"fitted on 1 record\(s\) that are in run eval \(e.g. id 'x7'"):
        calibrate.apply(loaded, other + [{**dev[7], "id": "x7"}], "eval", "cal.json")  # same content, another id
    with pytest.raises(UserError, match="no label probabilities"):
        calibrate.fit([{k: v for k, v in r.items() if k != "label_probs"} for r in dev])
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(UserError, match="expected 'patent-risk-calibration/1'"):
        calibrate.load(tmp_path / "bad.json")


def test_calibrate_command_writes_the_file_and_says_the_rule(tmp_path):
    from click.testing import CliRunner

    from patent_risk.cli.evaluate import main
    from patent_risk.evaluate.rundir import write_run

    dev = write_run(tmp_path / "dev", _dev_rows(), None)
    out = CliRunner().invoke(main, ["calibrate", str(dev), "--out", str(tmp_path / "cal.json"), "--accuracy", "0.9"])
    assert out.exit_code == 0, out.output
    assert "risk_level: 40 dev decisions, temperature" in out.output and "for 90% accuracy" in out.output
    assert json.loads((tmp_path / "cal.json").read_text())["format"] == "patent-risk-calibration/1"
    empty = write_run(tmp_path / "empty", [{k: v for k, v in r.items() if k != "label_probs"} for r in _dev_rows()], None)
    bad = CliRunner().invoke(main, ["calibrate", str(empty), "--out", str(tmp_path / "x.json")])
    assert bad.exit_code == 2 and "no label probabilities" in bad.output


def test_paired_calibration_compares_two_runs_on_the_decisions_both_read():
    from patent_risk.evaluate.calibration import paired_calibration

    def rows(conf_right: float, conf_wrong: float):
        out = []
        for i in range(30):
            right = i % 3 != 0
            lab = "높음" if right else "낮음"
            c = conf_right if right else conf_wrong
            probs = {"높음": c if right else (1 - c) / 2, "애매": (1 - c) / 2, "낮음": c if not right else (1 - c) / 2}
            out.append({"id": f"s{i}", "gold": {"risk_level": "높음", "matches": []},
                        "label_probs": {"risk_level": {"label": lab, "probs": probs, "mass": 1.0}, "matches": []}})
        return out
    ranked, flat = rows(0.9, 0.6), rows(0.9, 0.9)  # the same answers; only the first ranks its errors last
    got = paired_calibration(flat, ranked, n_resamples=300, seed=1)
    risk = got["risk_level"]
    assert risk["decisions"] == 30 and risk["samples"] == 30
    assert risk["aurc"]["run"] < risk["aurc"]["reference"] and risk["aurc"]["ci95"][1] < 0  # better ranking, sure of it
    assert risk["ece"]["difference"] == pytest.approx(risk["ece"]["run"] - risk["ece"]["reference"], abs=1e-4)
    assert got["match"] is None  # no match decisions read
    assert paired_calibration(flat, [{"id": "s0", "gold": None}]) is None
