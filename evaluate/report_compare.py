"""Paired comparisons of runs against a reference run (the ``comparisons`` of metrics.json).

Each run is compared with the reference on the samples both have (the intersection of ids; the entry
says so when the sets differ). Accuracies are compared on the common samples whose gold is the same in
both runs: McNemar's exact test on sample-level risk correctness, and paired bootstrap intervals of the
risk- and match-accuracy differences that resample samples (a sample's elements move together).
Differences are ``run - reference``: positive means the run is better.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import polars as pl

from .report_metrics import count_block
from .scoring import Scored
from .stats import bootstrap_sums, mcnemar_exact, percentile_interval

_SAMPLE_COLUMNS = ["id", "row", "valid", "record_valid", "has_gold", "gold_risk", "pred_risk", "risk_correct", "match_total", "match_correct"]


def _mcnemar(frame: pl.DataFrame, ref_col: str, run_col: str) -> dict[str, Any]:
    """b: right in the reference only; c: right in the run only; exact two-sided p-value."""
    b = int((frame[ref_col] & ~frame[run_col]).sum())
    c = int((~frame[ref_col] & frame[run_col]).sum())
    return {"b": b, "c": c, "p_value": float(f"{mcnemar_exact(b, c):.6g}")}


def _paired_block(ref_count: int, run_count: int, total: int) -> dict[str, Any]:
    return {"reference": count_block(ref_count, total), "run": count_block(run_count, total),
            "difference": round((run_count - ref_count) / total, 4) if total else None}


def _note(reference: str, run: str, n_ref: int, n_run: int, n_common: int, gold_differs: int) -> str | None:
    parts = []
    if not (n_ref == n_run == n_common):
        parts.append(f"the runs cover different samples ({reference}: {n_ref}, {run}: {n_run}); "
                     f"compared on the {n_common} samples both have")
    if gold_differs:
        parts.append(f"{gold_differs} common samples have a different gold in the two runs and are left out of the accuracy comparison")
    return "; ".join(parts) or None


def _record_valid_pair(common: pl.DataFrame) -> dict[str, Any] | None:
    """record_valid paired over the samples whose ids both runs know (null when there are none)."""
    known = common.filter(pl.col("record_valid").is_not_null() & pl.col("record_valid_run").is_not_null())
    if known.is_empty():
        return None
    return (_paired_block(int(known["record_valid"].sum()), int(known["record_valid_run"].sum()), known.height)
            | {"mcnemar": _mcnemar(known, "record_valid", "record_valid_run")})


def _compare_one(ref: pl.DataFrame, run: pl.DataFrame, ref_el: pl.DataFrame, run_el: pl.DataFrame,
                 reference: str, name: str) -> tuple[dict[str, Any], pl.DataFrame]:
    common = ref.join(run, on="id", how="inner", suffix="_run", maintain_order="left")
    agree = (ref_el.join(run_el, on=["id", "element_id", "gold_match"], how="inner")
             .group_by("id").agg(gold_agree=pl.len().cast(pl.UInt32)))
    common = common.join(agree, on="id", how="left", maintain_order="left").with_columns(pl.col("gold_agree").fill_null(0))
    both_gold = pl.col("has_gold") & pl.col("has_gold_run")
    same_gold = (both_gold & (pl.col("gold_risk") == pl.col("gold_risk_run"))
                 & (pl.col("gold_agree") == pl.col("match_total")) & (pl.col("gold_agree") == pl.col("match_total_run")))
    gold_differs = int(common.select((both_gold & ~same_gold).sum()).item())
    comparable = common.filter(same_gold)

    n_common, n_comp = common.height, comparable.height
    risk_ref, risk_run = int(comparable["risk_correct"].sum()), int(comparable["risk_correct_run"].sum())
    match_total = int(comparable["match_total"].sum())
    flipped = (comparable.filter(pl.col("risk_correct") != pl.col("risk_correct_run"))
               .select("id", gold="gold_risk", reference_predicted="pred_risk", run_predicted="pred_risk_run",
                       direction=pl.when(pl.col("risk_correct_run")).then(pl.lit("fixed")).otherwise(pl.lit("broken"))))
    entry = {
        "reference": reference,
        "run": name,
        "samples": {"reference": ref.height, "run": run.height, "common": n_common, "compared": n_comp,
                    "same_samples": ref.height == run.height == n_common, "gold_differs": gold_differs},
        "note": _note(reference, name, ref.height, run.height, n_common, gold_differs),
        "json_valid": _paired_block(int(common["valid"].sum()), int(common["valid_run"].sum()), n_common)
        | {"mcnemar": _mcnemar(common, "valid", "valid_run")},
        "record_valid": _record_valid_pair(common),
        "risk_accuracy": _paired_block(risk_ref, risk_run, n_comp) | {"ci95": None} | {"mcnemar": _mcnemar(comparable, "risk_correct", "risk_correct_run")},
        "match_accuracy": _paired_block(int(comparable["match_correct"].sum()), int(comparable["match_correct_run"].sum()), match_total)
        | {"ci95": None},
        "flipped": flipped.to_dicts(),
    }
    return entry, comparable


def _interval(draws: np.ndarray) -> list[float] | None:
    low, high = percentile_interval(draws)
    return None if np.isnan(low) else [round(low, 4), round(high, 4)]


def _bootstrap_group(pairs: list[tuple[dict[str, Any], pl.DataFrame]], n_resamples: int, seed: int) -> None:
    """Fill the intervals of comparisons that share one sample set, from one set of resamples."""
    first = pairs[0][1]
    columns = [np.ones(first.height), first["match_total"].to_numpy(), first["risk_correct"].to_numpy(),
               first["match_correct"].to_numpy()]
    for _, frame in pairs:
        columns += [frame["risk_correct_run"].to_numpy(), frame["match_correct_run"].to_numpy()]
    sums = bootstrap_sums(np.column_stack(columns).astype(float), n_resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        for j, (entry, _) in enumerate(pairs):
            risk = (sums[:, 4 + 2 * j] - sums[:, 2]) / sums[:, 0]
            match = (sums[:, 5 + 2 * j] - sums[:, 3]) / sums[:, 1]
            entry["risk_accuracy"]["ci95"] = _interval(risk)
            entry["match_accuracy"]["ci95"] = _interval(match)


def run_pairs(names: Sequence[str], reference: str, mode: str, arms: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """The (reference, run) pairs a report compares. ``reference``: each run against the reference run;
    ``all``: every pair, in the order given (the earlier run is the pair's reference); ``within-arm``: every
    pair of runs of the same arm (``arms``: run -> its ``constrained`` value; None is an arm of its own), e.g.
    the schemas of a comparison against each other, constrained with constrained."""
    if mode == "reference":
        return [(reference, n) for n in names if n != reference]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    if mode == "all":
        return pairs
    if mode == "within-arm":
        arms = arms or {}
        return [(a, b) for a, b in pairs if arms.get(a) == arms.get(b)]
    raise ValueError(f"pairs: unknown mode {mode!r} (reference, within-arm, all)")


def compare_runs(scored: Scored, names: Sequence[str], reference: str, n_resamples: int = 1000,
                 seed: int = 0, pairs: Sequence[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """One comparison entry per pair: by default each run other than ``reference`` against it, in the order of
    ``names``; ``pairs`` ((reference, run) each, see ``run_pairs``) lists them instead.

    Comparisons with the same reference over the same sample set share one bootstrap (the same resamples),
    which is what makes nine comparisons of 10,000 samples cheap; each interval is still its own pair's
    paired interval.
    """
    by_run = {run: part.select(_SAMPLE_COLUMNS)
              for (run,), part in scored.samples.partition_by("run", as_dict=True).items()}
    el_by_run = {run: part.select("id", "element_id", "gold_match")
                 for (run,), part in scored.elements.partition_by("run", as_dict=True).items()}
    empty_el = scored.elements.select("id", "element_id", "gold_match").clear()
    entries = []
    groups: dict[tuple[str, bytes], list[tuple[dict[str, Any], pl.DataFrame]]] = {}
    for ref, name in run_pairs(names, reference, "reference") if pairs is None else pairs:
        entry, comparable = _compare_one(by_run[ref], by_run[name], el_by_run.get(ref, empty_el),
                                         el_by_run.get(name, empty_el), ref, name)
        entry["bootstrap"] = {"resamples": n_resamples, "seed": seed, "unit": "sample"}
        entries.append(entry)
        if comparable.height:
            groups.setdefault((ref, comparable["row"].to_numpy().tobytes()), []).append((entry, comparable))
    for group in groups.values():
        _bootstrap_group(group, n_resamples, seed)
    return entries
