"""The learning check: a second dataset, in the demo's record format and on the demo's patents, prompt, output
schemas and risk rule, built so that a small model can learn it in minutes on a CPU while no constant,
positional or per-patent answer does well (`patent-risk datagen --learning-check`, committed in
data/learncheck/).

The demo task hangs on numbers near range boundaries, unit conversions and which ingredient belongs to which
class; Gemma 3 270M does not learn it on a CPU in any budget tried. Here each element's match is decided by what
the query says about that element in plain words: every element named in the claim's order after its id, one
status word per state first ("E1 있음 무기자차 18중량%", "E3 없음 실리콘 오일", "E2 미기재 산화아연"). Five design rounds on
the dev split (docs/2026-12-06-learning-check.md): random order with the not-given left out; every element in
order; after its id; the deciding words right after the id; one word per state (this one). None is learnt within
the issue's budget (about 95 steps of the demo recipe): the model begins to read the query after 80-120 steps.

    present    "있음", the element's name and, for an element with a range, a value well inside it (the
               claim's own unit; at least 30% of the range from either end)                     -> 대응
    absent     "없음" and the name (never for a measured property)                               -> 미대응
    vague      "모호" and the name (only for elements with a range)                               -> 판단불가
    not_given  "미기재" and the name                                                              -> 판단불가

risk_level follows from the matches by the demo's rule (schemas.risk_rules ``all-elements``): every element
대응 -> 높음, any 미대응 -> 낮음, else 애매. Each split holds the risk levels in equal shares and the patents in
equal shares; the element states are drawn to fit the record's risk level (independent balanced matches would
make 낮음 the large majority under this rule), the same way at every element position and for every patent. So
the majority answer, an answer by element position and an answer by patent all stay near a third on risk
(``rule_baselines`` measures them).

An element is named by its claim text without the range ("폴리아미드계 겔화제", "점도", "자외선 차단지수(SPF)"), or
by its short role ("겔화제", "무기자차", "유화제") when that text is longer than ``MAX_NAME``.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

from patent_risk.schemas.labels import MATCH_LABELS, RISK_LEVELS
from patent_risk.schemas.risk_rules import all_elements

from .demo import write_splits
from .patents import PATENTS, ElementSpec, PatentSpec

SEED = 20261206
SPLITS = {"train": 600, "dev": 120, "eval": 150}
STATE_MATCH = {"present": "대응", "absent": "미대응", "vague": "판단불가", "not_given": "판단불가"}
MAX_NAME = 14
INSIDE = Fraction(3, 10)  # a present value lies at least this share of the range from either end
P_UNKNOWN_AMBIGUOUS = 0.4  # 애매: each element unknown (vague or not given) with this chance, at least one
P_ABSENT_LOW = 0.35  # 낮음: each element that can be absent is, with this chance, at least one
P_UNKNOWN_LOW = 0.3  # 낮음: each other element unknown with this chance, else present
STATUS = {"present": "있음", "absent": "없음", "vague": "모호", "not_given": "미기재"}  # round 5: one word per state


def element_name(el: ElementSpec) -> str:
    """How the query names an element: its claim text without the range, or its role when that is long."""
    text = re.sub(r"\s*[\d.,]+\s*(내지|이상).*$", "", el.text).strip()
    return text if len(text) <= MAX_NAME else el.role


def _can_be_absent(el: ElementSpec) -> bool:
    return el.kind != "property"


def _can_be_vague(el: ElementSpec) -> bool:
    return el.numeric


def _present_value(rng: random.Random, el: ElementSpec) -> Fraction:
    lo, hi = el.lo, el.hi
    if hi is None:  # one-sided ("SPF 30 이상"): well above the bound
        lo, hi = lo * Fraction(3, 2), lo * 2
        span = hi - lo
        a, b = lo, hi
    else:
        span = hi - lo
        a, b = lo + INSIDE * span, hi - INSIDE * span
    step = el.step
    first, last = -(-a // step), b // step
    return step * rng.randint(int(first), int(last))


def _number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.1f}"


def _statement(rng: random.Random, el: ElementSpec, state: str) -> str:
    """What the query says of an element: one status word per state first, right after the element's id
    (round 5), then the element's name and, for a present element with a range, its value."""
    said = f"{STATUS[state]} {element_name(el)}"
    if state != "present" or not el.numeric:
        return said
    value = _number(_present_value(rng, el))
    return f"{said} {value}" if el.unit in ("pH", "SPF") else f"{said} {value}{el.unit}"


def _reason(el: ElementSpec, state: str, statement: str) -> str:
    name = el.role
    return {"present": f"{statement.removeprefix(STATUS['present'] + ' ')}, 범위 안" if el.numeric else f"{name} 함유",
            "absent": f"{name} 없음", "vague": f"{name} 수치 없음(모호)", "not_given": f"{name} 미기재"}[state][:40]


def _unknown(rng: random.Random, el: ElementSpec) -> str:
    return rng.choice(("vague", "not_given")) if _can_be_vague(el) else "not_given"


def plan_states(rng: random.Random, patent: PatentSpec, risk: str) -> dict[str, str]:
    """Each element's state for a record of ``risk``: the same draw at every position."""
    els = patent.elements
    if risk == "높음":
        return {e.id: "present" for e in els}
    if risk == "애매":
        states = {e.id: (_unknown(rng, e) if rng.random() < P_UNKNOWN_AMBIGUOUS else "present") for e in els}
        if all(s == "present" for s in states.values()):
            e = rng.choice(els)
            states[e.id] = _unknown(rng, e)
        return states
    absentable = [e for e in els if _can_be_absent(e)]
    states = {}
    for e in els:
        if _can_be_absent(e) and rng.random() < P_ABSENT_LOW:
            states[e.id] = "absent"
        else:
            states[e.id] = _unknown(rng, e) if rng.random() < P_UNKNOWN_LOW else "present"
    if "absent" not in states.values():
        states[rng.choice(absentable).id] = "absent"
    return states


def make_record(rng: random.Random, patent: PatentSpec, risk: str, record_id: str, split: str) -> dict[str, Any]:
    states = plan_states(rng, patent, risk)
    statements = {e.id: _statement(rng, e, states[e.id]) for e in patent.elements}
    said = [f"{eid} {s}" for eid, s in statements.items()]  # each statement after its element's id
    code = f"{rng.choice(patent.code_prefixes)}-{rng.randint(100, 999)}"
    query = f"{code} {rng.choice(patent.forms)}: " + ", ".join(said)
    matches = [{"element_id": e.id, "match": STATE_MATCH[states[e.id]],
                "reason": _reason(e, states[e.id], statements[e.id])} for e in patent.elements]
    label_risk = all_elements(m["match"] for m in matches)
    assert label_risk == risk, (record_id, states)
    return {"id": record_id, "patent_id": patent.patent_id, "claim": patent.claim,
            "elements": [{"id": e.id, "text": e.text} for e in patent.elements], "query": query,
            "label": {"risk_level": risk, "matches": matches},
            "meta": {"split": split, "task": "learning-check", "states": states}}


def generate(seed: int = SEED) -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "dev": [...], "eval": [...]}``: risk levels and patents in equal shares per split
    (as near as the split's size allows), every query distinct across the splits."""
    out: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for split, n in SPLITS.items():
        rng = random.Random(f"{seed}:learncheck:{split}")
        slots = [(PATENTS[i % len(PATENTS)], RISK_LEVELS[(i // len(PATENTS)) % len(RISK_LEVELS)]) for i in range(n)]
        rng.shuffle(slots)
        records = []
        for i, (patent, risk) in enumerate(slots):
            for _ in range(100):
                rec = make_record(rng, patent, risk, f"lc-{split}-{i + 1:04d}", split)
                if rec["query"] not in seen:
                    break
            seen.add(rec["query"])
            records.append(rec)
        out[split] = records
    return out


def write_split(out_dir: str | Path, seed: int = SEED) -> dict[str, Path]:
    """Write ``train.jsonl``, ``dev.jsonl`` and ``eval.jsonl`` under out_dir; return their paths by split."""
    return write_splits(out_dir, generate(seed))


def _modes(pairs: Iterable[tuple[Any, str]], order: tuple[str, ...]) -> dict[Any, str]:
    """For each key, its most frequent label; ties go to the label first in ``order`` (the schema's order, as
    `evaluate baseline` breaks them)."""
    counts: dict[Any, Counter] = {}
    for key, label in pairs:
        counts.setdefault(key, Counter())[label] += 1
    return {k: min(c, key=lambda lab: (-c[lab], order.index(lab))) for k, c in counts.items()}


def rule_answers(train: list[dict], rule: str) -> Any:
    """A rule learnt from the training records alone, as a function record -> (risk_level, {element_id: match}).

    ``constant``: the most frequent risk level and match. ``position``: per element position (E1, E2, ...) the
    most frequent match there, and the most frequent risk level among records with as many elements.
    ``patent``: per patent its most frequent risk level and, per element, its most frequent match."""
    risk_key, match_key = {
        "constant": (lambda r: None, lambda r, eid: None),
        "position": (lambda r: len(r["elements"]), lambda r, eid: eid),
        "patent": (lambda r: r["patent_id"], lambda r, eid: (r["patent_id"], eid)),
    }.get(rule, (None, None))
    if risk_key is None:
        raise ValueError(f"rule {rule!r}: constant, position or patent")
    risk = _modes(((risk_key(r), r["label"]["risk_level"]) for r in train), RISK_LEVELS)
    match = _modes(((match_key(r, m["element_id"]), m["match"]) for r in train for m in r["label"]["matches"]),
                   MATCH_LABELS)
    return lambda rec: (risk[risk_key(rec)], {e["id"]: match[match_key(rec, e["id"])] for e in rec["elements"]})


RULES = ("constant", "position", "patent")


def rule_baselines(train: list[dict], records: list[dict]) -> dict[str, dict[str, float]]:
    """Risk and match accuracy of each rule (learnt on ``train``) on ``records``."""
    out = {}
    for rule in RULES:
        answer = rule_answers(train, rule)
        risk_ok = match_ok = n_match = 0
        for rec in records:
            risk, matches = answer(rec)
            risk_ok += risk == rec["label"]["risk_level"]
            for m in rec["label"]["matches"]:
                match_ok += matches.get(m["element_id"]) == m["match"]
                n_match += 1
        out[rule] = {"risk_accuracy": risk_ok / len(records), "match_accuracy": match_ok / n_match}
    return out
