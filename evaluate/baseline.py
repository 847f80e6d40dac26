"""The majority-class baseline as a run directory (issue 16, first step).

The report's "majority-class baseline" row is the best constant answer *on the evaluated samples* (their own
gold labels): a reference line, but no run a model can be paired against, and chosen by looking at the eval
split. Here the constant answer is learnt from the training split only (its most frequent ``risk_level``
and its most frequent element ``match``; ties in the vocabulary's order), written for every evaluated record
as an ordinary run directory (docs/formats.md section 3): the report scores it and pairs it sample by sample
(McNemar, paired bootstrap) against a model's run like any other run.
"""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from patent_risk.runtime.artifacts import atomic_write_text, file_sha256
from patent_risk.runtime.engines import GenResult
from patent_risk.schemas.errors import UserError
from patent_risk.schemas.labels import MATCH_LABELS, RISK_LEVELS
from patent_risk.schemas.output import has_reason, load_schema, output_object, render_compact, schema_hash
from patent_risk.schemas.records import Record, load_dataset

from .batch import RUN_FORMAT_VERSION, result_row, write_json
from .rundir import RESULTS, RUN_JSON

ENGINE_NAME = "majority-class"


def majority_labels(train: list[Record]) -> dict[str, Any]:
    """The training split's most frequent risk level and element match, with the counts behind them."""
    labelled = [r.label for r in train if r.label is not None]
    if not labelled:
        raise UserError("the training data has no labelled record: no majority to learn")
    risk = Counter(label.risk_level for label in labelled)
    match = Counter(m.match for label in labelled for m in label.matches)

    def top(counts: Counter, order: tuple[str, ...]) -> str:
        return min(counts, key=lambda lab: (-counts[lab], order.index(lab)))

    return {"risk_level": top(risk, RISK_LEVELS), "match": top(match, MATCH_LABELS),
            "counts": {"risk_level": dict(risk), "match": dict(match)}, "labelled_records": len(labelled)}


def write_majority_run(train_path: str, data_path: str, out: str, schema_name: str = "v1") -> dict[str, Any]:
    """Write OUT/results.jsonl and OUT/run.json: the training split's majority answer for every record of
    ``data_path``; returns run.json's content. Refuses an existing non-empty OUT (a baseline is rewritten
    by deleting it) and a schema with reasons, v2 (its per-element reasons are text no constant answer has)."""
    if has_reason(schema_name):
        raise UserError(f"--schema {schema_name}: the majority baseline answers in schemas without reasons only "
                        f"(v1, v3): {schema_name} asks a reason per element")
    run_dir = Path(out)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir}: not empty; delete it to write the baseline again")
    train = load_dataset(train_path).records
    data = load_dataset(data_path).records
    train_ids = {r.id for r in train}
    shared = sorted(train_ids & {r.id for r in data})
    if shared:
        raise UserError(f"{train_path} and {data_path} share {len(shared)} record id(s) (e.g. {shared[0]!r}): "
                        "the baseline must be learnt without the evaluated records")
    maj = majority_labels(train)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = []
    for rec in data:
        answer = output_object(schema_name, maj["risk_level"],
                               [{"element_id": e.id, "match": maj["match"]} for e in rec.elements])
        res = GenResult(record_id=rec.id, raw_output=render_compact(answer),
                        finish_reason="stop", prompt_tokens=0, output_tokens=0, latency_s=None)
        lines.append(json.dumps(result_row(rec, res), ensure_ascii=False))
    atomic_write_text(run_dir / RESULTS, "".join(line + "\n" for line in lines))
    info = {
        "format_version": RUN_FORMAT_VERSION,
        "base_model": None,
        "adapter": None,
        "dataset": {"path": data_path, "sha256": file_sha256(data_path), "records": len(data), "limit": None},
        "schema": {"name": schema_name, "hash": schema_hash(load_schema(schema_name))},
        "constrained": False,
        "engine": {"name": ENGINE_NAME, "version": "1", "mode": "synthetic",
                   "train_data": {"path": train_path, "sha256": file_sha256(train_path)},
                   "answer": {"risk_level": maj["risk_level"], "match": maj["match"]},
                   "train_counts": maj["counts"], "labelled_train_records": maj["labelled_records"]},
        "sampling": None,
        "started_at": started,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": {"samples": len(data), "finish_reasons": {"stop": len(data)}},
    }
    write_json(run_dir / RUN_JSON, info)
    return info
