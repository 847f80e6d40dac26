"""What the trainer trains on: the held-out slice, `limit`, and the data mix (boundary augmentation,
oversampling). Pure: config + records in, records + a JSON summary (the manifest's ``data_mix``) out.

Order of operations, all deterministic given the config and the file:
  0. carve off the dev split (``dev_size`` records chosen by ``dev_seed``): recipes are chosen on it, so it is
     never trained on and never in the eval-loss slice (``dev_split``);
  1. split off the eval-loss slice (``eval_fraction``, chosen by ``seed``); it is never touched again;
  2. keep the first ``limit`` remaining records: the *base* records;
  3. repeat every base record whose ``oversample_where`` value is truthy until it appears
     ``oversample_factor`` times in all;
  4. add ``augment_boundary`` records from ``datagen.demo.generate_boundary_cases`` (seed ``seed``),
     for the patents of the base records, validated as ``Record``s like loaded ones;
  5. when 3 or 4 added anything, shuffle the list with ``seed`` (otherwise the file's order is kept).
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from typing import Any, Sequence

from pydantic import ValidationError

from patent_risk.schemas.errors import UserError
from patent_risk.schemas.jsonl import MISSING, dig
from patent_risk.schemas.records import Record

from .config import TrainConfig


def _carve(records: Sequence, n: int, seed: int | str) -> tuple[list, list]:
    """(the rest, n records chosen by shuffling the indices with ``seed``), both in the file's order."""
    if n == 0:
        return list(records), []
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    held = set(idx[:n])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def split_records(records: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """A held-out slice for eval loss, chosen by seed; the rest keeps the file's order."""
    return _carve(records, int(round(len(records) * eval_fraction)), seed)


def ids_sha256(records: Sequence[Record]) -> str:
    """sha256 of the ordered ids as a compact UTF-8 JSON array, e.g. ``["train-0001","aug-42-00001"]``."""
    ids = [r.id for r in records]
    return hashlib.sha256(json.dumps(ids, ensure_ascii=False, separators=(",", ":")).encode("utf-8")).hexdigest()


def records_sha256(records: Sequence[Record]) -> str:
    """sha256 of the ordered records' content: one compact, key-sorted JSON object per line."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r.to_json(), ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _risk_counts(records: Sequence[Record]) -> dict[str, int]:
    counts = Counter(r.label.risk_level if r.label is not None else "none" for r in records)
    return dict(sorted(counts.items()))


def _boundary_records(cfg: TrainConfig, base: Sequence[Record], known_queries: set[str]) -> tuple[list[Record], list[str]]:
    from patent_risk.datagen.demo import DEFAULT_SEED, PATENTS, generate, generate_boundary_cases

    specs = {p.patent_id: p for p in PATENTS}
    present = {r.patent_id for r in base}
    unknown = sorted(present - specs.keys())
    if unknown:
        raise UserError(f"augment_boundary={cfg.augment_boundary}: {cfg.train_data} has patent_id(s) the boundary "
                        f"generator does not know: {', '.join(unknown)} (it generates only for the demo patents "
                        f"{', '.join(specs)}); set augment_boundary=0 for this data")
    for r in base:
        spec = specs[r.patent_id]
        if r.claim != spec.claim or [(e.id, e.text) for e in r.elements] != [(e.id, e.text) for e in spec.elements]:
            raise UserError(f"augment_boundary={cfg.augment_boundary}: record {r.id} ({r.patent_id}) has a claim or "
                            f"elements other than the demo generator's for that patent, so generated records would "
                            f"not match it; set augment_boundary=0 for this data")
    patents = [p.patent_id for p in PATENTS if p.patent_id in present]
    # The generator's default exclusion (every query of the default-seed split, eval included), plus
    # every query of the file being trained on (held-out slice included): no generated query repeats one.
    default_split = generate(DEFAULT_SEED)
    exclude = {r["query"] for recs in default_split.values() for r in recs} | known_queries
    out = []
    for raw in generate_boundary_cases(cfg.augment_boundary, seed=cfg.seed, patents=patents, exclude_queries=exclude):
        try:
            out.append(Record.model_validate(raw))
        except ValidationError as e:  # a generator bug, never the user's data
            raise RuntimeError(f"generated record {raw.get('id')} is not a valid record: {e}") from None
    return out, patents


def build_training_mix(cfg: TrainConfig, base: Sequence[Record], *,
                       known_queries: Sequence[str] = ()) -> tuple[list[Record], dict[str, Any]]:
    """The training list for ``base`` (the records left after the held-out slice and ``limit``) and
    the manifest's ``data_mix`` summary. ``known_queries``: queries no generated record may repeat
    (the trainer passes every query of the file, held-out slice included)."""
    base = list(base)
    mixed = list(base)
    selected: list[Record] = []
    if cfg.oversample_where is not None:
        values = [dig({"meta": r.meta}, cfg.oversample_where) for r in base]
        if all(v is MISSING for v in values):
            keys = sorted({k for r in base for k in (r.meta or {})})
            raise UserError(f"oversample_where={cfg.oversample_where}: no training record has that field "
                            f"(meta keys present: {', '.join(keys) or 'none'})")
        selected = [r for r, v in zip(base, values) if v is not MISSING and v]
        mixed += [r for r in selected for _ in range(cfg.oversample_factor - 1)]
    generated: list[Record] = []
    patents: list[str] = []
    if cfg.augment_boundary:
        generated, patents = _boundary_records(cfg, base, set(known_queries) | {r.query for r in base})
        taken = {r.id for r in base} & {r.id for r in generated}
        if taken:
            raise UserError(f"augment_boundary: {cfg.train_data} already uses the generated id(s) "
                            f"{', '.join(sorted(taken)[:5])}; generated ids are aug-SEED-NNNNN")
        mixed += generated
    shuffled = len(mixed) != len(base)
    if shuffled:
        random.Random(f"{cfg.seed}:data_mix").shuffle(mixed)
    summary = {
        "base_records": len(base),
        "base_risk_levels": _risk_counts(base),
        "augment_boundary": len(generated),
        "augment_seed": cfg.seed if generated else None,
        "augment_patents": patents,
        "augment_risk_levels": _risk_counts(generated),
        "oversample_where": cfg.oversample_where,
        "oversample_factor": cfg.oversample_factor,
        "oversample_selected": len(selected),
        "oversample_added": len(selected) * (cfg.oversample_factor - 1),
        "shuffled": shuffled,
        "train_examples": len(mixed),
        "train_risk_levels": _risk_counts(mixed),
        "train_ids_sha256": ids_sha256(mixed),
        "train_records_sha256": records_sha256(mixed),
    }
    return mixed, summary


def dev_split(cfg: TrainConfig, records: Sequence[Record]) -> tuple[list[Record], list[Record]]:
    """(the rest, the dev split): ``cfg.dev_size`` records chosen by ``cfg.dev_seed``, both in the file's order."""
    if cfg.dev_size and cfg.dev_size >= len(records):
        raise UserError(f"dev_size={cfg.dev_size}: {cfg.train_data} has only {len(records)} records; "
                        "leave some to train on")
    return _carve(records, cfg.dev_size, f"dev:{cfg.dev_seed}")


def training_data(cfg: TrainConfig, records: Sequence[Record]) -> tuple[list[Record], list[Record], dict[str, Any]]:
    """(training list, held-out slice, data_mix summary) for all the records of ``cfg.train_data``."""
    rest, dev = dev_split(cfg, records)
    train_recs, held_out = split_records(rest, cfg.eval_fraction, cfg.seed)
    if cfg.limit is not None:
        train_recs = train_recs[: cfg.limit]
    mixed, summary = build_training_mix(cfg, train_recs, known_queries=[r.query for r in records])
    dev_info = {"dev_records": len(dev), "dev_seed": cfg.dev_seed, "dev_ids_sha256": ids_sha256(dev)} if dev else {}
    summary = {"base_records": summary.pop("base_records"), "held_out_records": len(held_out), **dev_info, **summary}
    return mixed, held_out, summary
