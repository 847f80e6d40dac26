"""The demo split (data/demo) and its generator, datagen.demo.

Labels are checked against the rules re-derived here from the element texts, not from the
generator's own tables, so a drift on either side shows up.
"""
from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from patent_risk.datagen import demo as demo_data
from patent_risk.datagen import patents
from patent_risk.schemas.records import Record, load_dataset

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"

RULE_MATCH = {
    "in_range": "대응", "ingredient_present": "대응",
    "out_of_range": "미대응", "ingredient_absent": "미대응",
    "near_boundary": "판단불가", "missing": "판단불가", "vague": "판단불가",
}
META_KEYS = {"split", "novel", "rules", "boundary_distance", "near_boundary", "template"}
NUM = r"(\d[\d,]*(?:\.\d+)?)"


@pytest.fixture(scope="module")
def split() -> dict[str, list[Record]]:
    loaded = {name: load_dataset(DEMO / f"{name}.jsonl") for name in ("train", "eval")}
    for ds in loaded.values():
        assert ds.skipped == []
    return {name: ds.records for name, ds in loaded.items()}


def _range(element_text: str) -> tuple[Fraction | None, Fraction | None] | None:
    """(lo, hi) as the claim element states it, or None for an element without a range."""
    def num(s: str) -> Fraction:
        return Fraction(s.replace(",", ""))

    if m := re.search(NUM + r" 내지 " + NUM, element_text):
        return num(m.group(1)), num(m.group(2))
    if m := re.search(NUM + r" 이상", element_text):
        return num(m.group(1)), None
    if m := re.search(NUM + r" 이하", element_text):
        return None, num(m.group(1))
    return None


def _distance(value: Fraction, lo: Fraction | None, hi: Fraction | None) -> Fraction:
    parts = ([(value - lo) / lo] if lo is not None else []) + ([(hi - value) / hi] if hi is not None else [])
    return min(parts)


def _risk(matches: list[str]) -> str:
    if "미대응" in matches:
        return "낮음"
    return "높음" if all(m == "대응" for m in matches) else "애매"


def _renderings(value: Fraction) -> set[str]:
    """Ways the generator may print a value (plain, with thousands separators, as Pa·s)."""
    def plain(x: Fraction) -> str:
        return str(x.numerator) if x.denominator == 1 else f"{float(x):g}"

    out = {plain(value), f"{float(value):.1f}"}
    if value.denominator == 1:
        out.add(f"{value.numerator:,}")
    out.add(plain(value / 1000) + " Pa·s")
    return out


def check_record(rec: Record) -> None:
    """The record's labels agree with the rules re-applied to its meta and element texts."""
    meta = rec.meta
    assert meta is not None and META_KEYS <= set(meta), rec.id
    rules, values = meta["rules"], meta.get("values", {})
    assert set(rules) == set(rec.element_ids), rec.id
    distances = []
    for el in rec.elements:
        rule = rules[el.id]
        assert rule in RULE_MATCH, (rec.id, rule)
        if rule in ("in_range", "out_of_range", "near_boundary"):
            bounds = _range(el.text)
            assert bounds is not None, (rec.id, el.id, "value rule on an element without a range")
            value = Fraction(str(values[el.id]))
            assert any(r in rec.query for r in _renderings(value)), (rec.id, el.id, value, rec.query)
            s = _distance(value, *bounds)
            # the generator keeps a gap around the 5% margin so no label hangs on rounding
            assert not (Fraction(4, 100) < abs(s) < Fraction(65, 1000)), (rec.id, el.id, s)
            expected = "near_boundary" if abs(s) <= Fraction(5, 100) else ("in_range" if s > 0 else "out_of_range")
            assert rule == expected, (rec.id, el.id, value, rule, expected)
            distances.append(s)
        else:
            assert el.id not in values, (rec.id, el.id)
    matches = {m.element_id: m.match for m in rec.label.matches}
    assert matches == {eid: RULE_MATCH[r] for eid, r in rules.items()}, rec.id
    assert rec.label.risk_level == _risk([m.match for m in rec.label.matches]), rec.id
    assert meta["near_boundary"] == ("near_boundary" in rules.values()), rec.id
    if distances:
        closest = min(distances, key=abs)
        assert meta["boundary_distance"] == pytest.approx(float(closest), abs=1e-4), rec.id
    else:
        assert meta["boundary_distance"] is None, rec.id


def test_committed_files_load_and_carry_meta(split):
    for name, records in split.items():
        for rec in records:
            assert rec.label is not None
            assert rec.meta["split"] == name
            assert META_KEYS <= set(rec.meta)


def test_eval_shape(split):
    ev = split["eval"]
    assert len(ev) == 147
    assert len({r.patent_id for r in ev}) == 5
    assert 620 <= sum(len(r.elements) for r in ev) <= 660
    mix = Counter(r.label.risk_level for r in ev)
    for level, target in {"높음": 30, "애매": 49, "낮음": 68}.items():
        assert abs(mix[level] - target) <= 4, mix


def test_train_shape(split):
    train = split["train"]
    assert len(train) >= 600
    assert {r.patent_id for r in train} == {r.patent_id for r in split["eval"]}
    assert set(Counter(r.label.risk_level for r in train)) == {"높음", "애매", "낮음"}


def test_ids_unique_across_splits(split):
    ids = [r.id for records in split.values() for r in records]
    assert len(ids) == len(set(ids))


def test_no_query_overlap(split):
    train_queries = {r.query for r in split["train"]}
    assert not [r.id for r in split["eval"] if r.query in train_queries]


def test_queries_are_short(split):
    lengths = [len(r.query) for records in split.values() for r in records]
    assert max(lengths) <= 130
    assert sum(lengths) / len(lengths) <= 100


def test_novel_records_use_phrasing_train_never_uses(split):
    train, ev = split["train"], split["eval"]
    novel = [r for r in ev if r.meta["novel"]]
    assert 0.15 * len(ev) <= len(novel) <= 0.25 * len(ev)
    assert not [r for r in train if r.meta["novel"]]
    train_templates = {r.meta["template"] for r in train}
    train_queries = [r.query for r in train]
    for rec in novel:
        assert rec.meta["template"] not in train_templates, rec.id
        for feature in rec.meta["novel_features"]:
            kind, _, text = feature.partition(":")
            if kind in ("name", "unit"):
                assert text in rec.query, (rec.id, feature)
                assert not any(text in q for q in train_queries), (rec.id, feature)
    for rec in ev:
        if not rec.meta["novel"]:
            assert rec.meta["template"] in train_templates, rec.id


def test_regenerating_with_default_seed_reproduces_committed_files(tmp_path):
    from click.testing import CliRunner

    from patent_risk.cli.datagen import main

    assert CliRunner().invoke(main, [str(tmp_path)]).exit_code == 0
    for name in ("train", "eval"):
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (DEMO / f"{name}.jsonl").read_bytes(), name


def test_other_seed_gives_other_data():
    assert demo_data.generate(1)["eval"] != demo_data.generate(demo_data.DEFAULT_SEED)["eval"]


@pytest.mark.parametrize("name", ["train", "eval"])
def test_every_label_follows_the_rules(split, name):
    for rec in split[name]:
        check_record(rec)


def test_ambiguous_is_mostly_a_boundary_call(split):
    ambiguous = [r for r in split["eval"] if r.label.risk_level == "애매"]
    hinge = [r for r in ambiguous
             if list(r.meta["rules"].values()).count("near_boundary") == 1
             and sum(m.match == "판단불가" for m in r.label.matches) == 1]
    assert len(hinge) >= len(ambiguous) // 3
    just_outside = [r for r in split["eval"] if r.label.risk_level == "낮음"
                    and r.meta["boundary_distance"] is not None and -0.15 <= r.meta["boundary_distance"] < -0.05]
    assert just_outside


def test_rule_functions():
    stick = patents.patent_by_id("KR10-2019-0034127")
    gel = stick.element("E1")  # 8 내지 50중량%
    assert patents.rule_for_value(gel, 50) == "near_boundary"
    assert patents.rule_for_value(gel, 52) == "near_boundary"
    assert patents.rule_for_value(gel, 53) == "out_of_range"
    assert patents.rule_for_value(gel, 47) == "in_range"
    assert patents.rule_for_value(gel, 8) == "near_boundary"
    assert patents.rule_for_value(gel, 7) == "out_of_range"
    spf = patents.patent_by_id("KR10-2021-0097456").element("E4")  # 30 이상
    assert [patents.rule_for_value(spf, v) for v in (28, 29, 31, 32, 50)] == [
        "out_of_range", "near_boundary", "near_boundary", "in_range", "in_range"]
    assert patents.risk_from_matches(["대응", "대응"]) == "높음"
    assert patents.risk_from_matches(["대응", "판단불가"]) == "애매"
    assert patents.risk_from_matches(["판단불가", "미대응"]) == "낮음"
    assert patents.RULE_MATCH == RULE_MATCH


def test_patents_are_well_formed():
    assert len(patents.PATENTS) == 5
    for patent in patents.PATENTS:
        assert re.fullmatch(r"KR10-\d{4}-\d{7}", patent.patent_id)
        assert 3 <= len(patent.elements) <= 6
        assert [e.id for e in patent.elements] == [f"E{i}" for i in range(1, len(patent.elements) + 1)]
        assert patent.claim.endswith("화장료 조성물.") and "로서" in patent.claim
        for el in patent.elements:
            assert (_range(el.text) is not None) == el.numeric, el.text
            if el.numeric:
                assert _range(el.text) == (el.lo, el.hi), el.text


def test_boundary_cases(split):
    cases = demo_data.generate_boundary_cases(80, seed=3)
    assert len(cases) == 80
    assert cases == demo_data.generate_boundary_cases(80, seed=3)
    records = [Record.model_validate(c) for c in cases]
    split_ids = {r.id for rs in split.values() for r in rs}
    split_queries = {r.query for rs in split.values() for r in rs}
    ids = [r.id for r in records]
    assert len(set(ids)) == len(ids) and not set(ids) & split_ids
    assert not {r.query for r in records} & split_queries
    for rec in records:
        check_record(rec)
        assert rec.meta["split"] == "train" and not rec.meta["novel"]
        assert rec.meta["boundary_distance"] is not None
        assert abs(rec.meta["boundary_distance"]) <= demo_data.BOUNDARY_BAND
    assert sum(r.meta["near_boundary"] for r in records) >= len(records) // 2
    assert len({r.label.risk_level for r in records}) == 3
    other_seed = {r["id"] for r in demo_data.generate_boundary_cases(10, seed=4)}
    assert not other_seed & set(ids)


def test_boundary_cases_for_chosen_patents():
    sunscreen = "KR10-2021-0097456"
    cases = demo_data.generate_boundary_cases(12, seed=5, patents=[sunscreen], exclude_queries=())
    assert {c["patent_id"] for c in cases} == {sunscreen}


@pytest.mark.parametrize("name", ["train", "eval"])
def test_every_match_has_a_reason_from_its_rule(split, name):
    """Issue 18: v2 trains on the data's reasons. Each is at most v2's maxLength, and says what its rule
    saw: the value and where it fell (the value as the rule judged it, and the claim's range or the boundary
    it is near), or the element's state; the gold v2 answer is v2-valid."""
    from patent_risk.schemas.output import REASON_MAX_LENGTH, schema_errors
    from patent_risk.schemas.prompt import label_to_output

    words = {"ingredient_present": ("포함", "일치"), "ingredient_absent": ("없음", "불일치"), "missing": ("미기재",),
             "vague": ("수치 없음(모호)",), "in_range": (" 안",), "out_of_range": (" 밖",), "near_boundary": ("±5% 이내",)}
    for rec in split[name]:
        for m in rec.label.matches:
            rule = rec.meta["rules"][m.element_id]
            assert m.reason and len(m.reason) <= REASON_MAX_LENGTH, (rec.id, m)
            assert m.reason.endswith(words[rule]), (rec.id, rule, m.reason)
            if rule in patents.VALUE_RULES:
                value = Fraction(str(rec.meta["values"][m.element_id]))
                stated = Fraction(re.search(NUM, m.reason).group(1).replace(",", ""))
                assert stated == value, (rec.id, m.reason)
        assert schema_errors(label_to_output(rec.label, "v2"), "v2") == []


def test_the_demo_rule_is_the_reports_risk_rule():
    from patent_risk.schemas.risk_rules import RISK_RULES, risk_rule

    assert risk_rule("all-elements") is RISK_RULES["all-elements"]
    for matches in (["대응"] * 3, ["대응", "판단불가"], ["판단불가", "미대응"], ["미대응"], ["판단불가"] * 2):
        assert patents.risk_from_matches(matches) == RISK_RULES["all-elements"](matches)
