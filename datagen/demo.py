"""A seeded generator of the Korean demo dataset (docs/formats.md section 1), its committed split
(data/demo/, `patent-risk datagen`), and the boundary cases `train` can augment with
(augment_boundary). The patents and labelling rules: datagen.patents; query rendering: datagen.render.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterable, Sequence

from .patents import (
    PATENTS,
    RULE_MATCH,
    ElementSpec,
    PatentSpec,
    judge,
    patent_by_id,
    reason_for,
    risk_from_matches,
    signed_distance,
)
from .render import MAX_QUERY_CHARS, NOVEL_TEMPLATES, SHARED_TEMPLATES, _render_query, _Style

DEFAULT_SEED = 20260131


BOUNDARY_BAND = 0.15  # generate_boundary_cases: every record has |boundary_distance| <= this


# Split sizes. Eval: 147 records, 643 elements, 30 높음 / 49 애매 / 68 낮음.
EVAL_PER_PATENT = (30, 31, 30, 27, 29)


EVAL_RISK = {"높음": 30, "애매": 49, "낮음": 68}


EVAL_NOVEL = 30


TRAIN_PER_PATENT = 144


TRAIN_RISK_PER_PATENT = {"높음": 40, "애매": 50, "낮음": 54}


_POSITIVE = {"amount": "in", "property": "in", "presence": "present", "form": "present"}


def _unknown_cases(el: ElementSpec) -> list[str]:
    if el.kind == "form":
        return ["missing"]
    if el.numeric:
        return ["near", "missing", "vague"]
    return ["missing", "vague"]


def _negative_case(rng: random.Random, el: ElementSpec) -> str:
    if not el.numeric:
        return "absent"
    r = rng.random()
    if el.kind == "amount" and el.can_be_absent and r < 0.25:
        return "absent"
    return "out_edge" if rng.random() < 0.5 else "out"


def _plan(rng: random.Random, patent: PatentSpec, risk: str) -> dict[str, str]:
    """Intended case per element for a target risk level."""
    els = list(patent.elements)
    cases = {e.id: _POSITIVE[e.kind] for e in els}
    for e in els:
        if e.numeric and rng.random() < 0.2:
            cases[e.id] = "in_edge"
    if risk == "높음":
        return cases
    order = els[:]
    rng.shuffle(order)
    if risk == "애매":
        k = rng.choices((1, 2, 3), weights=(65, 25, 10))[0]
        numeric = [e for e in order if e.numeric]
        if numeric and rng.random() < 0.8:
            first = numeric[0]
            cases[first.id] = "near"
        else:
            first = order[0]
            cases[first.id] = rng.choice(_unknown_cases(first))
        rest = [e for e in order if e.id != first.id]
        for e in rest[: k - 1]:
            cases[e.id] = rng.choice(_unknown_cases(e))
        return cases
    # 낮음
    if rng.random() < 0.25:  # fails on one value just outside the margin, everything else met
        cases[rng.choice([e for e in order if e.numeric]).id] = "out_edge"
        return cases
    k = min(rng.choices((1, 2, 3), weights=(38, 40, 22))[0], len(els))
    for e in order[:k]:
        cases[e.id] = _negative_case(rng, e)
    rest = order[k:]
    n_unknown = rng.choices((0, 1, 2), weights=(45, 42, 13))[0]
    for e in rest[:n_unknown]:
        cases[e.id] = rng.choice(_unknown_cases(e))
    return cases


def _make_record(rng: random.Random, patent: PatentSpec, cases: dict[str, str], *, record_id: str,
                 split: str, template: str, novel: bool, exclude: set[str],
                 extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    for attempt in range(200):
        style = _Style(template, novel, [f"template:{template}"] if novel else [])
        code = f"{rng.choice(patent.code_prefixes)}-{rng.randint(1, 999)}"
        query, facts = _render_query(rng, patent, cases, style, code)
        if query in exclude or style.total_weight > 100 or (len(query) > MAX_QUERY_CHARS and attempt < 100):
            continue
        break
    else:  # pragma: no cover - the plans always leave room for a fresh query under 100%
        raise RuntimeError(f"{record_id}: could not render a fresh query whose amounts sum to 100% or less")
    exclude.add(query)
    rules = {el.id: judge(el, facts[el.id]) for el in patent.elements}
    matches = [{"element_id": eid, "match": RULE_MATCH[rule], "reason": reason_for(patent.element(eid), facts[eid], rule)}
               for eid, rule in rules.items()]
    values = {eid: float(f["value"]) for eid, f in facts.items() if f["state"] == "value"}
    distances = [signed_distance(facts[eid]["value"], patent.element(eid).lo, patent.element(eid).hi)
                 for eid in values]
    closest = min(distances, key=abs) if distances else None
    meta: dict[str, Any] = {
        "split": split,
        "novel": novel,
        "novel_features": sorted(set(style.features)),
        "template": template,
        "rules": rules,
        "values": values,
        "boundary_distance": None if closest is None else round(float(closest), 4),
        "near_boundary": any(r == "near_boundary" for r in rules.values()),
    }
    if extra_meta:
        meta.update(extra_meta)
    return {
        "id": record_id,
        "patent_id": patent.patent_id,
        "claim": patent.claim,
        "elements": [{"id": el.id, "text": el.text} for el in patent.elements],
        "query": query,
        "label": {"risk_level": risk_from_matches(m["match"] for m in matches), "matches": matches},
        "meta": meta,
    }


def _build(rng: random.Random, slots: list[tuple[PatentSpec, str]], *, split: str, id_format: str,
           novel_indices: set[int], exclude: set[str]) -> list[dict[str, Any]]:
    records = []
    for i, (patent, risk) in enumerate(slots):
        novel = i in novel_indices
        template = rng.choice(NOVEL_TEMPLATES if novel else SHARED_TEMPLATES)
        cases = _plan(rng, patent, risk)
        rec = _make_record(rng, patent, cases, record_id=id_format.format(i + 1), split=split,
                           template=template, novel=novel, exclude=exclude)
        assert rec["label"]["risk_level"] == risk, (rec["id"], cases)
        records.append(rec)
    return records


def generate(seed: int = DEFAULT_SEED) -> dict[str, list[dict]]:
    """The demo split: ``{"train": [...], "eval": [...]}``, the same for the same seed."""
    train_rng = random.Random(f"{seed}:train")
    train_slots = [(p, risk) for p in PATENTS for risk, n in TRAIN_RISK_PER_PATENT.items() for _ in range(n)]
    train_rng.shuffle(train_slots)
    seen: set[str] = set()
    train = _build(train_rng, train_slots, split="train", id_format="train-{:04d}", novel_indices=set(),
                   exclude=seen)

    eval_rng = random.Random(f"{seed}:eval")
    risks = [risk for risk, n in EVAL_RISK.items() for _ in range(n)]
    eval_rng.shuffle(risks)
    eval_patents = [p for p, n in zip(PATENTS, EVAL_PER_PATENT) for _ in range(n)]
    eval_slots = list(zip(eval_patents, risks))
    eval_rng.shuffle(eval_slots)
    novel = set(eval_rng.sample(range(len(eval_slots)), EVAL_NOVEL))
    evaluation = _build(eval_rng, eval_slots, split="eval", id_format="eval-{:03d}", novel_indices=novel,
                        exclude=seen)
    return {"train": train, "eval": evaluation}


def dumps_jsonl(records: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)


def write_splits(out_dir: str | Path, splits: dict[str, list[dict]]) -> dict[str, Path]:
    """Write each split's records to ``out_dir/SPLIT.jsonl``; return their paths by split."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, records in splits.items():
        path = out / f"{split}.jsonl"
        path.write_bytes(dumps_jsonl(records).encode("utf-8"))
        paths[split] = path
    return paths


def write_split(out_dir: str | Path, seed: int = DEFAULT_SEED) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``eval.jsonl`` under out_dir; return their paths by split."""
    return write_splits(out_dir, generate(seed))


def generate_boundary_cases(n: int, seed: int, patents: Sequence[str | PatentSpec] | None = None,
                            exclude_queries: Iterable[str] | None = None) -> list[dict]:
    """n extra training records, each with a value close to a range boundary.

    Every record has |meta.boundary_distance| <= BOUNDARY_BAND: 60% are 애매 on one value within
    the margin, 20% 낮음 on one value just outside it, 20% 높음 with one value just inside it; all
    other elements are clearly met. Labels come from the same rules as the split. Ids are
    ``aug-{seed}-{i:05d}``, which the split's ``train-``/``eval-`` ids cannot take, and no query
    repeats one of exclude_queries (default: every query of the default-seed split).
    """
    chosen = [patent_by_id(p) if isinstance(p, str) else p for p in (patents or PATENTS)]
    if not chosen:
        raise ValueError("patents: give at least one patent")
    if exclude_queries is None:
        split = generate(DEFAULT_SEED)
        exclude = {r["query"] for records in split.values() for r in records}
    else:
        exclude = set(exclude_queries)
    rng = random.Random(f"{seed}:boundary")
    records = []
    for i in range(n):
        patent = chosen[i % len(chosen)]
        mode = rng.choices(("near", "out_edge", "in_edge"), weights=(60, 20, 20))[0]
        cases = {e.id: _POSITIVE[e.kind] for e in patent.elements}
        target = rng.choice([e for e in patent.elements if e.numeric])
        cases[target.id] = mode
        records.append(_make_record(
            rng, patent, cases, record_id=f"aug-{seed}-{i + 1:05d}", split="train",
            template=rng.choice(SHARED_TEMPLATES), novel=False, exclude=exclude,
            extra_meta={"augmented": True, "boundary_element": target.id}))
    return records
