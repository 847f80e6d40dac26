"""`evaluate calibrate DEV_RUN_DIR`: a decision rule fitted on a dev run, applied to an evaluation run (issue 32).

Fitted on the dev run's decisions (runtime.label_probs in its rows, gold in its records):

- temperature scaling per field: the label probabilities raised to 1/T and renormalized (T > 1 softens an
  over-confident model), T chosen to minimise the dev decisions' negative log-likelihood;
- the confidence threshold (after scaling) that keeps the most dev decisions with at least a target accuracy
  (default 95%): decisions below it go to a person;
- a threshold on P(애매): call risk_level 애매 whenever its probability reaches it, chosen as the highest that
  reaches a target 애매 recall on dev (the cost, in risk accuracy and in other cases called 애매, is stated).

The file records the content hashes of the dev records: a calibration applied to a run holding any of them is
refused (by content, not by id: ids repeat across users' files).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from patent_risk.runtime.artifacts import atomic_write_text
from patent_risk.runtime.label_probs import FIELDS
from patent_risk.schemas.errors import UserError

from .calibration import brier, coverage_at_accuracy, decisions, ece, risk_coverage

FORMAT = "patent-risk-calibration/1"
AMBIGUOUS = "애매"
TEMPERATURES = np.exp(np.linspace(math.log(0.05), math.log(20.0), 241))  # log-spaced grid, ~2.5% apart


def record_key(row: dict[str, Any]) -> str:
    """A record's content hash: its query and elements (what the model reads), not its id."""
    content = json.dumps({"query": row.get("query"), "elements": row.get("elements")}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:24]


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Label probabilities at ``temperature``: p^(1/T), renormalized per decision (a 0 stays 0)."""
    p = np.clip(np.asarray(probs, dtype=float), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        logits = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), -np.inf) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _nll(probs: np.ndarray, gold: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(gold)), gold], 1e-12, 1.0)).mean())


def fit_temperature(probs: Sequence[Sequence[float]], gold: Sequence[int]) -> float | None:
    """The grid temperature with the lowest NLL of the gold labels (None: no decisions)."""
    p, g = np.asarray(probs, dtype=float), np.asarray(gold, dtype=int)
    if p.size == 0:
        return None
    losses = [_nll(scale(p, t), g) for t in TEMPERATURES]
    return float(round(TEMPERATURES[int(np.argmin(losses))], 4))


def _ambiguous_rule(probs: np.ndarray, gold: np.ndarray, written: np.ndarray, recall: float) -> dict[str, Any]:
    """The highest threshold on P(애매) whose rule (애매 when P(애매) >= t, else the label written) reaches ``recall``
    of gold 애매 on these decisions, with what it costs there."""
    labels = FIELDS["risk_level"]
    a = labels.index(AMBIGUOUS)
    is_amb = gold == a
    base = {"target_recall": recall, "ambiguous_gold": int(is_amb.sum()),
            "recall_written": float((written[is_amb] == a).mean()) if is_amb.any() else None,
            "accuracy_written": float((written == gold).mean()) if len(gold) else None}
    if not is_amb.any():
        return {**base, "threshold": None, "why": "no gold 애매 decision to fit on"}
    for t in sorted(set(np.round(probs[:, a], 6)), reverse=True):
        called = np.where(probs[:, a] >= t, a, written)
        got = float((called[is_amb] == a).mean())
        if got >= recall - 1e-12:
            return {**base, "threshold": float(t), "recall": got, "accuracy": float((called == gold).mean()),
                    "other_called_ambiguous": int(((called == a) & ~is_amb & (written != a)).sum())}
    return {**base, "threshold": None, "why": f"no threshold reaches {recall:.0%} 애매 recall"}


def fit(rows: Sequence[dict[str, Any]], accuracy: float = 0.95, ambiguous_recall: float = 0.9) -> dict[str, Any]:
    """The calibration file's content from a dev run's rows (UserError when they carry no label probabilities)."""
    found, counts = decisions(rows)
    if not any(found[f]["confidence"] for f in FIELDS):
        raise UserError("the dev run's rows carry no label probabilities with gold labels (run `evaluate batch` with "
                        "--label-probs, the default, on a labelled dev split)")
    fields: dict[str, Any] = {}
    for field, col in found.items():
        probs, gold = np.asarray(col["probs"], dtype=float), np.asarray(col["gold"], dtype=int)
        t = fit_temperature(probs, gold)
        entry: dict[str, Any] = {"decisions": len(gold), "temperature": t}
        if t is not None:
            scaled = scale(probs, t)
            conf = scaled[np.arange(len(gold)), np.asarray(col["written"], dtype=int)]
            entry["nll_before"], entry["nll_after"] = round(_nll(probs, gold), 4), round(_nll(scaled, gold), 4)
            entry["keep"] = coverage_at_accuracy(conf, col["correct"], accuracy)
        fields[field] = entry
    risk = found["risk_level"]
    if risk["probs"]:
        scaled = scale(np.asarray(risk["probs"]), fields["risk_level"]["temperature"])
        fields["risk_level"]["ambiguous"] = _ambiguous_rule(scaled, np.asarray(risk["gold"]), np.asarray(risk["written"]),
                                                            ambiguous_recall)
    return {"format": FORMAT, "fields": fields, "accuracy_target": accuracy, "dev_rows": counts["rows"],
            "dev_records": sorted({record_key(r) for r in rows})}


def load(path: str | Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a calibration file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"{path}: format is {doc.get('format') if isinstance(doc, dict) else None!r}, expected {FORMAT!r} "
                        "(written by `patent-risk evaluate calibrate`)")
    return doc


def write(doc: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(Path(path), json.dumps(doc, ensure_ascii=False, indent=1) + "\n")


def apply(doc: dict[str, Any], rows: Sequence[dict[str, Any]], run_name: str, source: str) -> dict[str, Any]:
    """metrics.json's ``calibrated`` of one run: the dev-fitted rule applied to its decisions. Refused when the run
    holds any record the calibration was fitted on."""
    fitted = set(doc.get("dev_records", []))
    overlap = [r.get("id") for r in rows if record_key(r) in fitted]
    if overlap:
        raise UserError(f"{source}: fitted on {len(overlap)} record(s) that are in run {run_name} (e.g. id "
                        f"{overlap[0]!r}, compared by content): a calibration must come from a dev split that the "
                        "evaluated run does not contain")
    found, _ = decisions(rows)
    out: dict[str, Any] = {"source": source}
    for field, col in found.items():
        spec = doc["fields"].get(field) or {}
        t = spec.get("temperature")
        if t is None or not col["probs"]:
            out[field] = None
            continue
        labels = FIELDS[field]
        scaled = scale(np.asarray(col["probs"]), t)
        written = np.asarray(col["written"], dtype=int)
        conf = scaled[np.arange(len(written)), written]
        value, table = ece(conf, col["correct"])
        _, _, aurc = risk_coverage(conf, col["correct"])
        entry: dict[str, Any] = {"temperature": t, "ece": value, "ece_bins": table, "brier": brier(scaled, col["gold"]),
                                 "aurc": aurc}
        keep = spec.get("keep") or {}
        if keep.get("threshold") is not None:
            kept = conf >= keep["threshold"]
            ok = np.asarray(col["correct"], dtype=bool)
            entry["threshold_rule"] = {"threshold": keep["threshold"], "dev_accuracy_target": keep["accuracy"],
                                       "coverage": float(kept.mean()), "kept": int(kept.sum()),
                                       "accuracy_kept": float(ok[kept].mean()) if kept.any() else None}
        amb = spec.get("ambiguous") or {}
        if field == "risk_level" and amb.get("threshold") is not None:
            a = labels.index(AMBIGUOUS)
            gold = np.asarray(col["gold"])
            called = np.where(scaled[:, a] >= amb["threshold"], a, written)
            is_amb = gold == a
            entry["ambiguous_rule"] = {
                "threshold": amb["threshold"], "recall_written": float((written[is_amb] == a).mean()) if is_amb.any() else None,
                "recall": float((called[is_amb] == a).mean()) if is_amb.any() else None,
                "accuracy_written": float((written == gold).mean()), "accuracy": float((called == gold).mean()),
                "other_called_ambiguous": int(((called == a) & ~is_amb & (written != a)).sum())}
        out[field] = entry
    return out
