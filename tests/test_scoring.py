"""Scoring: output parsing, validity classes, per-sample and per-element tables, confusion matrices."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from patent_risk.evaluate.rundir import Run
from patent_risk.evaluate.scoring import (PARSE_FAILURE, SCHEMA_FAILURE, VALID, match_confusion, parse_output, per_class,
                              risk_confusion, score_runs, strip_fence)
from patent_risk.schemas.labels import INVALID, MATCH_LABELS, RISK_LEVELS


def out(risk: str, *matches: tuple[str, str]) -> str:
    return json.dumps({"risk_level": risk, "matches": [{"element_id": e, "match": m} for e, m in matches]}, ensure_ascii=False)


def gold(risk: str, *matches: tuple[str, str]) -> dict:
    return {"risk_level": risk, "matches": [{"element_id": e, "match": m} for e, m in matches]}


def make_run(rows: list[dict], name: str = "r", schema: str = "v1") -> Run:
    full = [{"finish_reason": "stop", **r} for r in rows]
    return Run(name, Path(name), None, full, schema)


# --- code fences and white space ---------------------------------------------------------------

def test_strip_fence_json_and_bare():
    body = '{"a": 1}'
    assert strip_fence(f"```json\n{body}\n```") == body
    assert strip_fence(f"  \n```\n{body}\n```\n ") == body
    assert strip_fence(f"```JSON\n{body}```") == body
    assert strip_fence(f"```{body}```") == body
    assert strip_fence(f"\t{body}\n") == body


def test_strip_fence_only_one_and_only_when_closed():
    body = '{"a": 1}'
    assert strip_fence(f"```json\n{body}") == f"```json\n{body}"  # truncated: no closing fence, left alone
    nested = f"```json\n```json\n{body}\n```\n```"
    assert strip_fence(nested) == f"```json\n{body}\n```"


def test_fenced_output_is_valid():
    text = "```json\n" + out("애매", ("E1", "대응")) + "\n```"
    assert parse_output(text, "v1").status == VALID


# --- parse failures against schema failures ----------------------------------------------------

def test_parse_failures():
    for text in ['{"risk_level": "높음", "matches": [', "", "not json", "[1, 2]", '"높음"', "NaN",
                 '{"risk_level": "높음", "matches": []} trailing', "```json\n{}"]:
        parsed = parse_output(text, "v1")
        assert parsed.status == PARSE_FAILURE, text
        assert parsed.obj is None and parsed.error


def test_schema_failures():
    for obj in [{"risk_level": "중간", "matches": []},
                {"risk_level": "높음"},
                {"risk_level": "높음", "matches": [{"element_id": "E1", "match": "yes"}]},
                {"risk_level": "높음", "matches": [], "extra": 1},
                {"risk_level": "높음", "matches": [{"element_id": 1, "match": "대응"}]}]:
        parsed = parse_output(json.dumps(obj, ensure_ascii=False), "v1")
        assert parsed.status == SCHEMA_FAILURE, obj
        assert parsed.obj is None and parsed.error


def test_v2_needs_reason():
    v1_text = out("높음", ("E1", "대응"))
    assert parse_output(v1_text, "v1").status == VALID
    assert parse_output(v1_text, "v2").status == SCHEMA_FAILURE
    v2 = {"risk_level": "높음", "matches": [{"element_id": "E1", "reason": "성분 일치", "match": "대응"}]}
    assert parse_output(json.dumps(v2, ensure_ascii=False), "v2").status == VALID


# --- tables ------------------------------------------------------------------------------------

def test_invalid_outputs_count_wrong_and_land_in_invalid_row():
    rows = [
        {"id": "a", "gold": gold("높음", ("E1", "대응"), ("E2", "미대응")), "raw_output": '{"risk_level": "높음"'},
        {"id": "b", "gold": gold("낮음", ("E1", "판단불가")), "raw_output": out("중간", ("E1", "판단불가"))},
        {"id": "c", "gold": gold("애매", ("E1", "대응")), "raw_output": out("애매", ("E1", "대응"))},
    ]
    scored = score_runs([make_run(rows)])
    s = scored.samples
    assert s["status"].to_list() == [PARSE_FAILURE, SCHEMA_FAILURE, VALID]
    assert s["pred_risk"].to_list() == [INVALID, INVALID, "애매"]
    assert s["risk_correct"].to_list() == [False, False, True]
    risk = risk_confusion(s)[None]
    assert risk[INVALID] == {"높음": 1, "애매": 0, "낮음": 1}
    assert risk["애매"]["애매"] == 1
    match = match_confusion(scored.elements)[None]
    assert match[INVALID] == {"대응": 1, "판단불가": 1, "미대응": 1}
    assert match["대응"]["대응"] == 1
    assert scored.elements["correct"].sum() == 1


def test_missing_repeated_and_unknown_element_ids():
    rows = [{
        "id": "a", "elements": [{"id": "E1", "text": "x"}, {"id": "E2", "text": "y"}, {"id": "E3", "text": "z"}],
        "gold": gold("높음", ("E1", "대응"), ("E2", "미대응"), ("E3", "판단불가")),
        # E1 twice (first one counts), E2 missing, E9 not the record's
        "raw_output": out("높음", ("E1", "대응"), ("E1", "미대응"), ("E9", "미대응"), ("E3", "판단불가")),
    }]
    scored = score_runs([make_run(rows)])
    s = scored.samples.row(0, named=True)
    assert (s["match_total"], s["match_correct"], s["missing_elements"]) == (3, 2, 1)
    assert (s["unknown_ids"], s["repeated_ids"]) == (1, 1)
    el = {r["element_id"]: r for r in scored.elements.iter_rows(named=True)}
    assert el["E1"]["pred_match"] == "대응" and el["E1"]["correct"]
    assert el["E2"]["pred_match"] == INVALID and el["E2"]["missing"]
    match = match_confusion(scored.elements)[None]
    assert match[INVALID]["미대응"] == 1  # the missing element: no usable prediction


def test_unknown_ids_fall_back_to_gold_ids_without_elements():
    rows = [{"id": "a", "gold": gold("높음", ("E1", "대응")), "raw_output": out("높음", ("E1", "대응"), ("X", "대응"))}]
    assert score_runs([make_run(rows)]).samples["unknown_ids"].to_list() == [1]


def test_null_gold_counts_in_validity_not_accuracy():
    rows = [{"id": "a", "gold": None, "raw_output": out("높음", ("E1", "대응"))},
            {"id": "b", "gold": None, "raw_output": "oops"},
            {"id": "c", "gold": gold("높음", ("E1", "대응")), "raw_output": out("높음", ("E1", "대응"))}]
    scored = score_runs([make_run(rows)])
    s = scored.samples
    assert s["valid"].sum() == 2 and s.height == 3
    assert s["has_gold"].sum() == 1
    assert sum(sum(r.values()) for r in risk_confusion(s)[None].values()) == 1
    assert scored.elements.height == 1


def test_slices_and_run_groups():
    rows = [{"id": "a", "gold": gold("높음", ("E1", "대응")), "raw_output": out("높음", ("E1", "대응")),
             "meta": {"boundary": {"distance": 1}}, "patent_id": "P1"},
            {"id": "b", "gold": gold("낮음", ("E1", "대응")), "raw_output": out("높음", ("E1", "대응"))}]
    scored = score_runs([make_run(rows, "x"), make_run(rows, "y")], ["meta.boundary.distance", "patent_id"])
    assert scored.samples["by:meta.boundary.distance"].to_list() == ["1", "(none)"] * 2
    assert scored.samples["by:patent_id"].to_list() == ["P1", "(none)"] * 2
    by_run = risk_confusion(scored.samples, "run")
    assert set(by_run) == {"x", "y"} and by_run["x"]["높음"] == {"높음": 1, "애매": 0, "낮음": 1}
    by_slice = risk_confusion(scored.samples.filter(pl.col("run") == "x"), "by:meta.boundary.distance")
    assert by_slice["1"]["높음"]["높음"] == 1 and by_slice["(none)"]["높음"]["낮음"] == 1


def test_matrices_are_complete_even_when_empty():
    rows = [{"id": "a", "gold": None, "raw_output": "x"}]
    scored = score_runs([make_run(rows)])
    risk = risk_confusion(scored.samples)[None]
    assert list(risk) == [*RISK_LEVELS, INVALID] and all(list(r) == list(RISK_LEVELS) for r in risk.values())
    match = match_confusion(scored.elements)[None]
    assert list(match) == [*MATCH_LABELS, INVALID] and sum(sum(r.values()) for r in match.values()) == 0


def test_per_class_from_seed_matrix():
    m = {"높음": {"높음": 29, "애매": 1, "낮음": 0}, "애매": {"높음": 0, "애매": 42, "낮음": 1},
         "낮음": {"높음": 0, "애매": 6, "낮음": 64}, INVALID: {"높음": 1, "애매": 0, "낮음": 3}}
    pc = per_class(m, RISK_LEVELS)
    c = pc["classes"]["애매"]
    assert (c["support"], c["predicted"], c["correct"]) == (49, 43, 42)
    assert c["precision"] == round(42 / 43, 4) and c["recall"] == round(42 / 49, 4)
    assert pc["classes"]["높음"]["recall"] == round(29 / 30, 4)
    f1s = []
    for lab in RISK_LEVELS:
        p = m[lab][lab] / sum(m[lab].values())
        r = m[lab][lab] / sum(row[lab] for row in m.values())
        f1s.append(2 * p * r / (p + r))
    assert pc["macro_f1"] == round(sum(f1s) / 3, 4)


def test_per_class_never_predicted_gets_f1_zero():
    m = {"높음": {"높음": 0, "애매": 0, "낮음": 0}, "애매": {"높음": 2, "애매": 1, "낮음": 0},
         "낮음": {"높음": 0, "애매": 0, "낮음": 0}, INVALID: {"높음": 0, "애매": 0, "낮음": 0}}
    pc = per_class(m, RISK_LEVELS)
    assert pc["classes"]["높음"]["precision"] is None and pc["classes"]["높음"]["f1"] == 0.0
    assert pc["classes"]["낮음"]["f1"] is None  # neither gold nor predicted: not a label here, left out of macro-F1
    assert pc["macro_f1"] == round((0.0 + 2 * (1 / 3) / (1 / 3 + 1)) / 2, 4)


def test_per_class_predicted_but_never_gold_counts_in_macro_f1():
    # gold: 높음 x2 (one answered invalid), 애매 x3; 낮음 is predicted once but never gold
    m = {"높음": {"높음": 1, "애매": 1, "낮음": 0}, "애매": {"높음": 0, "애매": 1, "낮음": 0},
         "낮음": {"높음": 0, "애매": 1, "낮음": 0}, INVALID: {"높음": 1, "애매": 0, "낮음": 0}}
    pc = per_class(m, RISK_LEVELS)
    low = pc["classes"]["낮음"]
    assert (low["support"], low["predicted"], low["correct"]) == (0, 1, 0)
    assert low["precision"] == 0.0 and low["recall"] is None and low["f1"] == 0.0
    high_f1 = 2 * (1 / 2) * (1 / 2) / (1 / 2 + 1 / 2)  # precision 1/2, recall 1/2
    mid_f1 = 2 * 1.0 * (1 / 3) / (1.0 + 1 / 3)  # precision 1/1, recall 1/3
    assert pc["macro_f1"] == round((high_f1 + mid_f1 + 0.0) / 3, 4)  # as scikit-learn: labels gold or predicted


# --- property: every gold item lands in exactly one cell ---------------------------------------

ids = st.sampled_from(["E1", "E2", "E3", "E4", "X"])
match_items = st.lists(st.tuples(ids, st.sampled_from(MATCH_LABELS)), max_size=5)


@st.composite
def sample(draw, i: int = 0):
    n = draw(st.integers(1, 4))
    element_ids = [f"E{j + 1}" for j in range(n)]
    g = draw(st.none() | st.builds(lambda risk, labels: gold(risk, *zip(element_ids, labels)),
                                   st.sampled_from(RISK_LEVELS), st.lists(st.sampled_from(MATCH_LABELS), min_size=n, max_size=n)))
    kind = draw(st.sampled_from(["valid", "fenced", "garbage", "truncated", "bad_label", "not_object"]))
    text = out(draw(st.sampled_from(RISK_LEVELS)), *draw(match_items))
    if kind == "fenced":
        text = f"```json\n{text}\n```"
    elif kind == "garbage":
        text = draw(st.text(max_size=20))
    elif kind == "truncated":
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    elif kind == "bad_label":
        text = text.replace(draw(st.sampled_from(RISK_LEVELS)), "중간")
    elif kind == "not_object":
        text = "[" + text + "]"
    return {"gold": g, "raw_output": text}


@settings(max_examples=60, deadline=None)
@given(st.lists(sample(), min_size=1, max_size=25))
def test_matrices_sum_to_denominators(samples):
    rows = [{"id": f"s{i}", **s} for i, s in enumerate(samples)]
    scored = score_runs([make_run(rows)])
    s, el = scored.samples, scored.elements
    risk = risk_confusion(s)[None]
    match = match_confusion(el)[None]
    with_gold = s.filter(pl.col("has_gold"))
    assert sum(v for r in risk.values() for v in r.values()) == with_gold.height
    assert sum(risk[lab][lab] for lab in RISK_LEVELS) == with_gold["risk_correct"].sum()
    assert sum(risk[INVALID].values()) == with_gold.filter(~pl.col("valid")).height
    assert sum(v for r in match.values() for v in r.values()) == el.height == s["match_total"].sum()
    assert sum(match[lab][lab] for lab in MATCH_LABELS) == el["correct"].sum() == s["match_correct"].sum()
    assert sum(match[INVALID].values()) == el.filter(pl.col("pred_match") == INVALID).height
    for lab in RISK_LEVELS:  # columns: the gold distribution
        assert sum(r[lab] for r in risk.values()) == with_gold.filter(pl.col("gold_risk") == lab).height
