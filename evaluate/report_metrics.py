"""Per-run metrics of a report (docs/formats.md section 4), computed with polars from scored tables.

Every table is one polars aggregation over all runs at once (``group_by("run", ...)``); Python only
walks aggregated rows (a few per run) to build the JSON document.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import polars as pl

from patent_risk.schemas.labels import INVALID, MATCH_LABELS, RISK_LEVELS
from patent_risk.schemas.output import current_schema_hash, load_schema, schema_hash

from . import conditions
from .calibration import run_calibration
from .rundir import Run
from .scoring import (NO_VALUE, PARSE_FAILURE, SCHEMA_FAILURE, SLICE_PREFIX, Scored, empty_matrix, match_confusion,
                      per_class, risk_confusion)
from .stats import clustered_interval, wilson_interval

OUTPUT_HEAD_CHARS = 200
QUERY_HEAD_CHARS = 60
EXAMPLE_IDS = 5


_CUT = (pl.col("finish_reason") == "length").fill_null(False)  # the token budget ended the output


def _headline_exprs() -> list[pl.Expr]:
    return [
        pl.len().alias("n"),
        pl.col("valid").sum().alias("valid"),
        pl.col("record_valid").sum().alias("record_valid"),
        pl.col("record_valid").is_not_null().sum().alias("record_total"),
        (pl.col("status") == PARSE_FAILURE).sum().alias("parse_failures"),
        (pl.col("status") == SCHEMA_FAILURE).sum().alias("schema_failures"),
        pl.col("has_gold").sum().alias("risk_total"),
        pl.col("risk_correct").sum().alias("risk_correct"),
        pl.col("match_total").sum().alias("match_total"),
        pl.col("match_correct").sum().alias("match_correct"),
        (pl.col("finish_reason") == "length").sum().alias("finish_length"),
        pl.col("unknown_ids").sum().alias("unknown_ids"),
        pl.col("repeated_ids").sum().alias("repeated_ids"),
        pl.col("missing_elements").sum().alias("missing_elements"),
        # why an output is not valid, one kind each (invalid_kinds): cut off by the token budget; otherwise not
        # JSON; otherwise JSON the schema refuses; or valid JSON with element ids other than the record's
        (~pl.col("valid") & _CUT).sum().alias("kind_truncated"),
        (~pl.col("valid") & ~_CUT & (pl.col("status") == PARSE_FAILURE)).sum().alias("kind_not_json"),
        (~pl.col("valid") & ~_CUT & (pl.col("status") == SCHEMA_FAILURE)).sum().alias("kind_schema"),
        (pl.col("valid") & (pl.col("record_valid") == False)).sum().alias("kind_wrong_ids"),  # noqa: E712 - null: ids unknown
    ]


INVALID_KINDS = ("truncated", "not_json", "schema", "wrong_ids")


def invalid_kinds(rec: dict[str, Any]) -> dict[str, int]:
    """Each output that is not record_valid, by one reason: ``truncated`` (finish_reason=length: the budget cut
    it), ``not_json`` (not parseable), ``schema`` (JSON the schema refuses: keys, types, labels), ``wrong_ids``
    (json_valid, but not exactly the record's element ids in order)."""
    return {kind: int(rec[f"kind_{kind}"]) for kind in INVALID_KINDS}


def headline_table(samples: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """Headline counts per group of ``keys``: n, valid, parse/schema failures, risk and match counts."""
    return samples.group_by(list(keys), maintain_order=True).agg(_headline_exprs())


def count_block(count: int, total: int) -> dict[str, Any]:
    """The contract's {count, total, rate} (rate null when total is 0)."""
    return {"count": int(count), "total": int(total), "rate": round(count / total, 4) if total else None}


def _with_interval(block: dict[str, Any], low: float, high: float) -> dict[str, Any]:
    block["ci95"] = None if np.isnan(low) else [round(float(low), 4), round(float(high), 4)]
    return block


def headline_blocks(rec: dict[str, Any]) -> dict[str, Any]:
    """The contract's headline keys from one row of ``headline_table``."""
    return {
        "n": int(rec["n"]),
        "json_valid": count_block(rec["valid"], rec["n"]),
        "record_valid": count_block(rec["record_valid"] or 0, rec["record_total"]),
        "risk_accuracy": count_block(rec["risk_correct"], rec["risk_total"]),
        "match_accuracy": count_block(rec["match_correct"], rec["match_total"]),
    }


def schema_info(run: Run, warnings: list[str]) -> dict[str, Any]:
    """The run's target schema: name and hash (run.json's, else the committed file's)."""
    committed = schema_hash(load_schema(run.schema_name))
    recorded = run.info.get("schema") if run.info else None
    recorded_hash = current_schema_hash(run.schema_name, recorded.get("hash")) if isinstance(recorded, dict) else None
    if recorded_hash and recorded_hash != committed:
        warnings.append(f"{run.name}: run.json records schema {run.schema_name} #{recorded_hash}, but the committed "
                        f"{run.schema_name} is #{committed}; outputs are scored against the committed schema")
    return {"name": run.schema_name, "hash": recorded_hash or committed, "committed_hash": committed}


def _describe(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("name", "id", "repo", "path"):
            if isinstance(value.get(key), str):
                version = value.get("version")
                return f"{value[key]} {version}" if isinstance(version, str) else value[key]
    return str(value)


def _field(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def provenance(info: dict[str, Any] | None) -> dict[str, Any]:
    """A summary of run.json: what was run, on what, how (empty when there is no run.json)."""
    if info is None:
        return {}
    return {
        "base_model": _describe(info.get("base_model")),
        "adapter": _describe(info.get("adapter")),
        "adapter_hash": _field(info.get("adapter"), "sha256") or _field(info.get("adapter"), "hash"),
        "dataset": _describe(info.get("dataset")),
        "dataset_hash": _field(info.get("dataset"), "sha256") or _field(info.get("dataset"), "hash"),
        "backend": info.get("backend"),
        "engine": _describe(info.get("engine")),
        "sampling": info.get("sampling"),
        "started_at": info.get("started_at"),
        "finished_at": info.get("finished_at"),
        "format_version": info.get("format_version"),
    }


def _majority(samples: pl.DataFrame, elements: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Per run: always predicting the most frequent gold label (ties: the vocabulary's order)."""
    out: dict[str, dict[str, Any]] = {}
    for frame, col, labels, key in ((samples, "gold_risk", RISK_LEVELS, "risk"), (elements, "gold_match", MATCH_LABELS, "match")):
        rank = {lab: i for i, lab in enumerate(labels)}
        counts = frame.filter(pl.col(col).is_not_null()).group_by("run", col).agg(count=pl.len())
        totals: dict[str, int] = {}
        best: dict[str, tuple[int, int, str]] = {}
        for run, label, count in counts.iter_rows():  # at most 3 rows per run
            totals[run] = totals.get(run, 0) + count
            if run not in best or (-count, rank[label]) < (-best[run][0], best[run][1]):
                best[run] = (count, rank[label], label)
        for run in totals:
            count, _, label = best[run]
            out.setdefault(run, {})[key] = {"label": label, **count_block(count, totals[run])}
    return out


def _error_patterns(samples: pl.DataFrame) -> pl.DataFrame:
    errors = samples.filter(pl.col("has_gold") & ~pl.col("risk_correct")).sort("run", "row")
    return (errors.group_by("run", "gold_risk", "pred_risk", maintain_order=True)
            .agg(count=pl.len(), example_ids=pl.col("id").head(EXAMPLE_IDS))
            .with_columns(share=(pl.col("count") / pl.col("count").sum().over("run")).round(4),
                          share_of_valid=pl.when(pl.col("pred_risk") != INVALID).then(
                              (pl.col("count") / pl.col("count").filter(pl.col("pred_risk") != INVALID).sum().over("run")).round(4)))
            .sort(["run", "count", "gold_risk", "pred_risk"], descending=[False, True, False, False]))


def _error_cases(samples: pl.DataFrame) -> pl.DataFrame:
    return (samples.filter(pl.col("has_gold") & ~pl.col("risk_correct")).sort("run", "row")
            .select("run", "id", "patent_id",
                    query=pl.when(pl.col("query").str.len_chars() > QUERY_HEAD_CHARS)
                    .then(pl.col("query").str.slice(0, QUERY_HEAD_CHARS) + "…").otherwise(pl.col("query")),
                    predicted=pl.col("pred_risk"), gold=pl.col("gold_risk"), status="status"))


def _invalid_outputs(samples: pl.DataFrame) -> pl.DataFrame:
    return (samples.filter(~pl.col("valid")).sort("run", "row")
            .select("run", "id", kind="status", finish_reason="finish_reason", error="error",
                    output_head=pl.col("raw_output").str.slice(0, OUTPUT_HEAD_CHARS)))


def _by_run(frame: pl.DataFrame) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for (run,), part in frame.partition_by("run", as_dict=True, maintain_order=True).items():
        out[run] = part.drop("run").to_dicts()
    return out


def _slice_metrics(samples: pl.DataFrame, elements: pl.DataFrame, column: str, with_confusion: bool) -> dict[str, dict[str, dict[str, Any]]]:
    """{run: {slice value: headline (+ confusion matrices)}} for one slice column of ``samples``."""
    keyed = samples.with_columns(pl.col(column).fill_null(NO_VALUE))
    table = headline_table(keyed, ["run", column]).sort("run", column)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for rec in table.iter_rows(named=True):
        out.setdefault(rec["run"], {})[rec[column]] = headline_blocks(rec) | {
            "parse_failures": int(rec["parse_failures"]), "schema_failures": int(rec["schema_failures"]),
            "finish_length": int(rec["finish_length"])}
    if with_confusion:
        el = elements.join(keyed.select("sid", column), on="sid", how="left")
        for run, values in out.items():
            risk = risk_confusion(keyed.filter(pl.col("run") == run), column)
            match = match_confusion(el.filter(pl.col("run") == run), column)
            for value, entry in values.items():
                entry["risk_confusion"] = risk[value]
                entry["match_confusion"] = match.get(value) or empty_matrix(MATCH_LABELS)
    return out


def _speed(info: dict[str, Any] | None, n: int, tokens: int, token_rows: int) -> dict[str, Any]:
    """Output tokens per sample (from the rows) and samples/s over run.json's ``generation_s`` less
    ``precompile_s`` (``decode_s``): generation's wall time (no engine start), summed over a resumed run's
    invocations, without the compile of the run's new outlines schemas before their chunk (once per schema; a
    later run finds them cached, so it is kept out of the throughput). Other backends compile inside vLLM, within
    the time. Nulls where the run does not tell."""
    gen = info.get("generation_s") if info else None
    gen = float(gen) if isinstance(gen, (int, float)) and not isinstance(gen, bool) and gen > 0 else None
    compile_s = info.get("precompile_s") if info else None
    compile_s = float(compile_s) if isinstance(compile_s, (int, float)) and not isinstance(compile_s, bool) else None
    decode = None if gen is None else gen - (compile_s or 0.0)
    decode = decode if decode is not None and decode > 0 else None
    per_sample = round(tokens / token_rows, 1) if token_rows else None
    return {"generation_s": gen, "precompile_s": compile_s, "decode_s": None if decode is None else round(decode, 3),
            "output_tokens": tokens if token_rows else None, "output_tokens_per_sample": per_sample,
            "samples_per_s": round(n / decode, 3) if decode and n else None,
            "output_tokens_per_s": round(tokens / decode, 1) if decode and token_rows == n else None}


def run_metrics(runs: Sequence[Run], scored: Scored, by: Sequence[str], warnings: list[str],
                risk_rule: str | None = None) -> dict[str, dict[str, Any]]:
    """The ``runs`` section of metrics.json: one entry per run, in the order given. ``risk_rule``: the name
    of the rule ``risk_consistent`` was scored with (None: not scored)."""
    samples, elements = scored.samples, scored.elements
    extra = {rec["run"]: rec for rec in samples.group_by("run").agg(
        consistent=pl.col("risk_consistent").sum(), judged=pl.col("risk_consistent").is_not_null().sum(),
        tokens=pl.col("output_tokens").sum(), token_rows=pl.col("output_tokens").is_not_null().sum()).iter_rows(named=True)}
    heads = {rec["run"]: rec for rec in headline_table(samples, ["run"]).iter_rows(named=True)}
    risk_m = risk_confusion(samples, "run")
    match_m = match_confusion(elements, "run")
    finish = samples.group_by("run", "finish_reason").agg(count=pl.len()).sort("run", "finish_reason", nulls_last=True)
    finish_reasons: dict[str, dict[str, int]] = {}
    for run, reason, count in finish.iter_rows():
        finish_reasons.setdefault(run, {})[reason if reason is not None else NO_VALUE] = count
    majority = _majority(samples, elements)
    patterns = _by_run(_error_patterns(samples))
    cases = _by_run(_error_cases(samples))
    invalid = _by_run(_invalid_outputs(samples))
    per_patent = _slice_metrics(samples, elements, "patent_id", with_confusion=False)
    slices = {f: _slice_metrics(samples, elements, SLICE_PREFIX + f, with_confusion=True) for f in by}
    parts = {run: part for (run,), part in samples.select("run", "has_gold", "match_correct", "match_total")
             .partition_by("run", as_dict=True).items()}

    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        rec = heads[run.name]
        entry = headline_blocks(rec)
        low, high = wilson_interval([rec["valid"], rec["risk_correct"]], [rec["n"], rec["risk_total"]])
        _with_interval(entry["json_valid"], low[0], high[0])
        _with_interval(entry["risk_accuracy"], low[1], high[1])
        part = parts[run.name].filter(pl.col("has_gold"))
        _with_interval(entry["match_accuracy"], *clustered_interval(part["match_correct"].to_numpy(), part["match_total"].to_numpy()))
        entry["risk_confusion"] = risk_m[run.name]
        entry["match_confusion"] = match_m.get(run.name) or empty_matrix(MATCH_LABELS)
        risk_pc = per_class(entry["risk_confusion"], RISK_LEVELS)
        match_pc = per_class(entry["match_confusion"], MATCH_LABELS)
        ex = extra[run.name]
        entry.update({
            "risk_rule": risk_rule,
            "risk_consistent": count_block(ex["consistent"] or 0, ex["judged"]) if risk_rule else None,
            "speed": _speed(run.info, int(rec["n"]), int(ex["tokens"] or 0), int(ex["token_rows"])),
            "conditions": conditions.summarize((run.info or {}).get("conditions")),
            "schema": schema_info(run, warnings),
            "constrained": run.info.get("constrained") if run.info else None,
            "provenance": provenance(run.info),
            "path": str(run.path),
            "results_sha256": run.results_sha256,
            "samples_without_gold": int(rec["n"] - rec["risk_total"]),
            "parse_failures": int(rec["parse_failures"]),
            "schema_failures": int(rec["schema_failures"]),
            "finish_length": int(rec["finish_length"]),
            "invalid_kinds": invalid_kinds(rec),
            "finish_reasons": finish_reasons.get(run.name, {}),
            "unknown_element_ids": int(rec["unknown_ids"]),
            "repeated_element_ids": int(rec["repeated_ids"]),
            "missing_elements": int(rec["missing_elements"]),
            "risk_per_class": risk_pc["classes"],
            "risk_macro_f1": risk_pc["macro_f1"],
            "match_per_class": match_pc["classes"],
            "match_macro_f1": match_pc["macro_f1"],
            "majority_baseline": majority.get(run.name, {}),
            "per_patent": per_patent.get(run.name, {}),
            "error_patterns": patterns.get(run.name, []),
            "error_cases": cases.get(run.name, []),
            "invalid_outputs": invalid.get(run.name, []),
            "slices": {f: slices[f].get(run.name, {}) for f in by},
            "warnings": list(run.warnings),
            "calibration": run_calibration(run.rows),
        })
        out[run.name] = entry
    return out

