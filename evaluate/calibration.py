"""Does the model's confidence mean something? Calibration and selective accuracy of decisions (issue 32).

A decision is one field of one answer (risk_level, or one element's match) with the probability the model gave
the label it wrote (``confidence``, runtime.label_probs), all the field's label probabilities, and whether the
label was right. Pure numpy: the report builds the arrays from its scored rows.

- ECE: expected calibration error over ``bins`` equal-width bins of confidence: the bins' |accuracy - mean
  confidence| weighted by their share of decisions (the bin table is returned with it: counts matter).
- Brier score: the mean over decisions of the squared distance between the label probabilities and the one-hot
  gold label (0 is perfect; a uniform guess over 3 labels scores 2/3).
- Risk-coverage: keep the most confident decisions first; at each coverage k/n, the error rate of the k kept.
  AURC is the mean of that error over k = 1..n (lower is better; a constant confidence gives the base error rate
  at every coverage, ties broken by the decisions' order).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def ece(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> tuple[float | None, list[dict[str, Any]]]:
    """(ECE, one row per bin: its range, decisions, mean confidence, accuracy); (None, []) for no decisions. The
    last bin is closed on the right (confidence 1.0 falls in it)."""
    conf = np.asarray(confidence, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    if conf.size == 0:
        return None, []
    which = np.minimum((conf * bins).astype(int), bins - 1)
    table, total = [], 0.0
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        row: dict[str, Any] = {"low": b / bins, "high": (b + 1) / bins, "n": n, "confidence": None, "accuracy": None}
        if n:
            row["confidence"] = float(conf[sel].mean())
            row["accuracy"] = float(ok[sel].mean())
            total += n / conf.size * abs(row["accuracy"] - row["confidence"])
        table.append(row)
    return float(total), table


def brier(probs: Sequence[Sequence[float]], gold: Sequence[int]) -> float | None:
    """Mean over decisions of sum_k (p_k - [k == gold])^2; ``probs`` one row per decision over the field's labels."""
    p = np.asarray(probs, dtype=float)
    if p.size == 0:
        return None
    onehot = np.zeros_like(p)
    onehot[np.arange(len(p)), np.asarray(gold, dtype=int)] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def risk_coverage(confidence: Sequence[float], correct: Sequence[bool]) -> tuple[list[float], list[float], float | None]:
    """(coverages, error rates of the decisions kept, AURC): the decisions sorted by confidence, highest first
    (ties in the given order), the k most confident kept for k = 1..n."""
    conf = np.asarray(confidence, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    if conf.size == 0:
        return [], [], None
    order = np.argsort(-conf, kind="stable")
    errors = np.cumsum(~ok[order])
    k = np.arange(1, conf.size + 1)
    risk = errors / k
    return (k / conf.size).tolist(), risk.tolist(), float(risk.mean())


def coverage_at_accuracy(confidence: Sequence[float], correct: Sequence[bool], accuracy: float) -> dict[str, Any]:
    """The largest share of decisions that can be kept, most confident first, with at least ``accuracy`` among the
    kept, and the confidence threshold that keeps them (the lowest kept confidence): a rule a user can apply."""
    conf = np.asarray(confidence, dtype=float)
    cov, risk, _ = risk_coverage(conf, correct)
    best = None
    for i, r in enumerate(risk):
        if 1.0 - r >= accuracy - 1e-12:
            best = i
    if best is None:
        return {"accuracy": accuracy, "coverage": 0.0, "kept": 0, "threshold": None}
    order = np.argsort(-conf, kind="stable")
    return {"accuracy": accuracy, "coverage": cov[best], "kept": best + 1, "threshold": float(conf[order[best]])}


ACCURACY_TARGETS = (0.95, 0.9)


def decisions(rows: Sequence[dict[str, Any]]) -> tuple[dict[str, dict[str, list[Any]]], dict[str, int]]:
    """The rows' read decisions that have a gold label, per field: their key (sample id, element id or None),
    confidence (the written label's probability), the field's label probabilities (in the labels' order), the gold
    and written labels' indexes, and whether the written label was right; and the counts of rows, rows with
    probabilities, rows without decision points, rows whose engine returned no probabilities (a server that
    refuses or ignores vLLM's logprob_token_ids) and decisions left unread."""
    from patent_risk.runtime.label_probs import FIELDS

    out: dict[str, dict[str, list[Any]]] = {
        f: {"key": [], "confidence": [], "probs": [], "gold": [], "written": [], "correct": []} for f in FIELDS}
    counts = {"rows": len(rows), "rows_with": 0, "rows_missing": 0, "rows_unavailable": 0, "unread": 0}
    for row in rows:
        lp, gold = row.get("label_probs"), row.get("gold")
        if not isinstance(lp, dict):
            continue
        if "missing" in lp:
            counts["rows_missing"] += 1
            continue
        if "unavailable" in lp:
            counts["rows_unavailable"] += 1
            continue
        counts["rows_with"] += 1
        gold_match = {m["element_id"]: m["match"] for m in (gold or {}).get("matches", [])}
        reads = [("risk_level", None, lp.get("risk_level"), (gold or {}).get("risk_level"))]
        reads += [("match", m.get("element_id"), m, gold_match.get(m.get("element_id"))) for m in lp.get("matches", [])]
        for field, element, d, want in reads:
            if not d:
                continue
            if "probs" not in d:
                counts["unread"] += 1
                continue
            labels = FIELDS[field]
            if want not in labels or d.get("label") not in labels:
                continue  # no gold to judge against, or a written value that is no label
            col = out[field]
            col["key"].append((row.get("id"), element))
            col["confidence"].append(d["probs"][d["label"]])
            col["probs"].append([d["probs"][lab] for lab in labels])
            col["gold"].append(labels.index(want))
            col["written"].append(labels.index(d["label"]))
            col["correct"].append(d["label"] == want)
    return out, counts


def run_calibration(rows: Sequence[dict[str, Any]], bins: int = 10) -> dict[str, Any] | None:
    """metrics.json's ``calibration`` of one run: per field ECE (with its bin table), Brier, AURC with the
    risk-coverage curve, and the coverage a user could keep at each of ACCURACY_TARGETS; None when no row carries
    label probabilities (a run made without them)."""
    found, counts = decisions(rows)
    if counts["rows_with"] == 0 and counts["rows_missing"] == 0 and counts["rows_unavailable"] == 0:
        return None
    out: dict[str, Any] = {"rows_with_probabilities": counts["rows_with"],
                           "rows_without_decision_points": counts["rows_missing"],
                           "rows_without_probabilities": counts["rows_unavailable"],
                           "decisions_unread": counts["unread"]}
    for field, col in found.items():
        value, table = ece(col["confidence"], col["correct"], bins)
        cov, risk, aurc = risk_coverage(col["confidence"], col["correct"])
        out[field] = {
            "decisions": len(col["confidence"]),
            "accuracy": (sum(col["correct"]) / len(col["correct"])) if col["correct"] else None,
            "mean_confidence": (sum(col["confidence"]) / len(col["confidence"])) if col["confidence"] else None,
            "ece": value, "ece_bins": table, "brier": brier(col["probs"], col["gold"]), "aurc": aurc,
            "risk_coverage": {"coverage": cov, "error": risk},
            "keep_at_accuracy": [coverage_at_accuracy(col["confidence"], col["correct"], a) for a in ACCURACY_TARGETS],
        }
    return out


def keyed_decisions(rows: Sequence[dict[str, Any]]) -> dict[str, dict[tuple[str, str | None], tuple[float, bool]]]:
    """Per field, {(sample id, element id or None): (confidence, right)} of the rows' decisions (``decisions``; the
    first when a key repeats)."""
    found, _ = decisions(rows)
    out: dict[str, dict[tuple[str, str | None], tuple[float, bool]]] = {}
    for field, col in found.items():
        keyed: dict[tuple[str, str | None], tuple[float, bool]] = {}
        for k, c, ok in zip(col["key"], col["confidence"], col["correct"]):
            keyed.setdefault(k, (c, ok))
        out[field] = keyed
    return out


def paired_calibration(ref_rows: Sequence[dict[str, Any]], run_rows: Sequence[dict[str, Any]], n_resamples: int = 1000,
                       seed: int = 0) -> dict[str, Any] | None:
    """ECE and AURC of two runs on the decisions both read, their difference (run - reference) and a paired
    bootstrap 95% interval resampling samples (a sample's element decisions move together); None when either run
    has no label probabilities."""
    ref, run = keyed_decisions(ref_rows), keyed_decisions(run_rows)
    if not any(ref.values()) or not any(run.values()):
        return None
    out: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    for field in ref:
        keys = sorted(set(ref[field]) & set(run[field]), key=lambda k: (k[0], k[1] or ""))
        if not keys:
            out[field] = None
            continue
        by_sample: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            by_sample.setdefault(k[0], []).append(i)
        groups = list(by_sample.values())
        a = np.array([ref[field][k] for k in keys], dtype=float)
        b = np.array([run[field][k] for k in keys], dtype=float)

        def stats(idx: np.ndarray) -> tuple[float, float, float, float]:
            ea, _ = ece(a[idx, 0], a[idx, 1].astype(bool))
            eb, _ = ece(b[idx, 0], b[idx, 1].astype(bool))
            return ea, eb, risk_coverage(a[idx, 0], a[idx, 1].astype(bool))[2], risk_coverage(b[idx, 0], b[idx, 1].astype(bool))[2]

        point = stats(np.arange(len(keys)))
        entry: dict[str, Any] = {"decisions": len(keys), "samples": len(groups)}
        draws = []
        for _ in range(n_resamples):
            pick = rng.integers(0, len(groups), len(groups))
            draws.append(stats(np.concatenate([groups[j] for j in pick])))
        d = np.array(draws) if draws else np.empty((0, 4))
        for j, name in ((0, "ece"), (2, "aurc")):
            diff = point[j + 1] - point[j]
            ci = (None if not len(d) else [round(float(x), 4) for x in np.percentile(d[:, j + 1] - d[:, j], [2.5, 97.5])])
            entry[name] = {"reference": round(point[j], 4), "run": round(point[j + 1], 4), "difference": round(diff, 4),
                           "ci95": ci}
        out[field] = entry
    return out
