"""The learning check's data (issue 30, datagen/learncheck.py): the committed files are the generator's, the
labels follow from what the query says by the stated rules, and no constant, positional or per-patent answer
does well. Pure: no model."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from patent_risk.datagen import learncheck
from patent_risk.datagen.patents import patent_by_id
from patent_risk.schemas.records import load_dataset
from patent_risk.schemas.risk_rules import all_elements

DATA = Path(__file__).resolve().parents[1] / "data" / "learncheck"


@pytest.fixture(scope="module")
def split():
    return learncheck.generate()


def test_the_committed_files_are_the_generators(tmp_path):
    for name, path in learncheck.write_split(tmp_path).items():
        assert path.read_bytes() == (DATA / f"{name}.jsonl").read_bytes(), name
        assert load_dataset(DATA / f"{name}.jsonl").records  # and they load as datasets


def test_each_split_balances_risk_levels_and_patents(split):
    for name, records in split.items():
        assert len(records) == learncheck.SPLITS[name]
        risks = Counter(r["label"]["risk_level"] for r in records)
        patents = Counter(r["patent_id"] for r in records)
        assert max(risks.values()) - min(risks.values()) <= 1, (name, risks)
        assert max(patents.values()) - min(patents.values()) <= 1, (name, patents)
    queries = [r["query"] for records in split.values() for r in records]
    assert len(queries) == len(set(queries))  # no query in two records, so none in two splits


def test_labels_follow_from_what_the_query_says(split):
    for rec in (r for records in split.values() for r in records):
        patent = patent_by_id(rec["patent_id"])
        body = rec["query"].split(": ", 1)[1]
        stated = body.split(", ")
        assert [s.split(" ", 1)[0] for s in stated] == [e["id"] for e in rec["elements"]]
        stated = [s.split(" ", 1)[1] for s in stated]
        for m, el, said in zip(rec["label"]["matches"], patent.elements, stated, strict=True):
            assert m["element_id"] == el.id
            state = rec["meta"]["states"][el.id]
            assert m["match"] == learncheck.STATE_MATCH[state]
            # the state's one word first, right after the id, then the element's name
            name = learncheck.element_name(el)
            assert said.startswith(f"{learncheck.STATUS[state]} {name}"), (rec["id"], el.id, said)
            rest = said[len(learncheck.STATUS[state]) + len(name) + 1:]
            if state == "absent":
                assert el.kind != "property"
            if state == "vague":
                assert el.numeric
            if state == "present" and el.numeric:  # a value well inside the claimed range, in the claim's unit
                word = rest.removeprefix(" ")
                value = float(word.removesuffix(el.unit)) if el.unit not in ("pH", "SPF") else float(word)
                lo = float(el.lo)
                hi = float(el.hi) if el.hi is not None else 2 * lo
                margin = float(learncheck.INSIDE) * (hi - lo) if el.hi is not None else 0.5 * lo - 1e-9
                assert lo + margin - 1e-9 <= value <= hi - (margin if el.hi is not None else 0) + 1e-9, (rec["id"], el.id, word)
            else:
                assert rest == "", (rec["id"], el.id, said)
        assert rec["label"]["risk_level"] == all_elements(m["match"] for m in rec["label"]["matches"])


def test_no_rule_without_the_query_does_well(split):
    """A constant, element-position or per-patent answer learnt on train stays at a third on risk (on the dev
    split: the eval split's figures are reported once, with the adapter's)."""
    for name in ("dev",):
        for rule, acc in learncheck.rule_baselines(split["train"], split[name]).items():
            assert acc["risk_accuracy"] <= 0.36, (name, rule, acc)
            assert acc["match_accuracy"] <= 0.70, (name, rule, acc)


def test_the_rules_are_learnt_from_train_alone():
    train = [{"patent_id": "P", "elements": [{"id": "E1"}, {"id": "E2"}],
              "label": {"risk_level": "낮음", "matches": [{"element_id": "E1", "match": "미대응"},
                                                          {"element_id": "E2", "match": "대응"}]}}] * 2 + \
            [{"patent_id": "Q", "elements": [{"id": "E1"}],
              "label": {"risk_level": "높음", "matches": [{"element_id": "E1", "match": "대응"}]}}]
    rec = {"patent_id": "Q", "elements": [{"id": "E1"}]}
    assert learncheck.rule_answers(train, "constant")(rec) == ("낮음", {"E1": "대응"})
    assert learncheck.rule_answers(train, "position")(rec) == ("높음", {"E1": "미대응"})
    assert learncheck.rule_answers(train, "patent")(rec) == ("높음", {"E1": "대응"})
    assert json.dumps(learncheck.rule_baselines(train, [dict(rec, label=train[2]["label"])]))
