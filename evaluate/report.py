"""`evaluate report`'s library side: run directories in, metrics.json, report.md and report.html out
(docs/formats.md section 4). The CLI only parses options and calls ``write_report``.

Layout of metrics.json (``format_version`` 1):

- ``format_version``, ``generated_at``, ``reference`` (the reference run), ``pairs`` (which runs are
  compared: ``reference``, ``within-arm`` or ``all``), ``risk_rule`` (or null), ``by`` (slice fields),
  ``bootstrap`` {resamples, seed}, ``warnings``, ``run_list`` [{name, path, schema {name, hash},
  constrained, adapter_hash, dataset_hash, results_sha256}]
- ``runs``: {RUN: the contract's ``n``, ``json_valid``, ``risk_accuracy``, ``match_accuracy``
  ({count, total, rate, ci95}), ``record_valid`` ({count, total, rate}: valid with exactly the record's
  element ids, in order, each once), ``risk_confusion``, ``match_confusion`` (rows: predicted labels and
  ``invalid``; columns: gold labels); and ``schema``, ``constrained``, ``provenance``, ``path``,
  ``results_sha256``, ``samples_without_gold``, ``parse_failures``, ``schema_failures``,
  ``finish_length``, ``invalid_kinds``, ``finish_reasons``, ``unknown_element_ids``, ``repeated_element_ids``,
  ``missing_elements``, ``risk_rule`` and ``risk_consistent`` ({count, total, rate}: valid outputs whose own
  risk_level is what their own matches imply under the rule; null without ``--risk-rule``), ``speed``
  {generation_s, precompile_s, decode_s, output_tokens, output_tokens_per_sample, samples_per_s,
  output_tokens_per_s} (per second of decode_s: generation less the grammar compile), ``conditions`` (run.json's
  speed conditions summed up: evaluate.conditions.summarize),
  ``risk_per_class``/``match_per_class`` {label: {support, predicted, correct,
  precision, recall, f1}}, ``risk_macro_f1``, ``match_macro_f1``, ``majority_baseline`` {risk, match},
  ``per_patent``, ``slices`` {FIELD: {value: headline + both matrices}}, ``error_patterns``,
  ``error_cases``, ``invalid_outputs``, ``warnings``}
- ``comparisons``: one entry per compared pair (by default each run against the reference; see
  ``report_compare``), each with
  ``differs`` (what differs between the two runs' run.json: ``field: reference -> run`` lines; None when
  one has no run.json), ``differs_unknown`` (the runs without run.json) and ``speed`` (both runs' samples/s and
  their ratio, null unless their speed conditions match: ``conditions_differ`` says what differs).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import polars as pl

from patent_risk.schemas import risk_rules
from patent_risk.schemas.errors import DataError, UserError

from .provenance import comparison_differences
from .report_compare import compare_runs, run_pairs
from .report_doc import build_document, comparison_sentence, differs_words, markdown_table, render_markdown, summary_table
from .report_html import render_html
from .report_metrics import run_metrics
from .rundir import Run, gc_paused, read_run
from .scoring import NO_VALUE, SLICE_PREFIX, score_runs, split_bins

FORMAT_VERSION = 1
METRICS_FILE = "metrics.json"
MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"
PAIR_MODES = ("reference", "within-arm", "all")


@dataclass
class Report:
    """A built report: the metrics.json document, its renderings, and where they were written (if they were).

    ``summary_markdown`` is what a terminal shows: the runs side by side with the majority-class
    baseline, then one line per comparison (accuracy changes with their p-value and interval)."""

    metrics: dict[str, Any]
    summary_markdown: str
    markdown: str
    html: str
    warnings: list[str] = field(default_factory=list)
    metrics_path: Path | None = None
    markdown_path: Path | None = None
    html_path: Path | None = None


def _read_runs(run_dirs: Sequence[str | Path]) -> list[Run]:
    """Read every run, listing the problems of all of them at once."""
    runs: list[Run] = []
    problems = []
    for d in run_dirs:
        try:
            runs.append(read_run(d))
        except DataError as e:
            problems.extend(e.problems)
    if problems:
        raise DataError(problems, hint="refused: fix the lines above (a torn last line alone is only a warning)")
    return runs


def _unique_names(runs: list[Run]) -> None:
    """Runs are named by their directory; two directories of the same name get their parent's name too."""
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.path.resolve().name}"
    seen: dict[str, Path] = {}
    for r in runs:
        if r.name in seen:
            raise UserError(f"{r.path}: the same run directory is given twice (as {seen[r.name]} too)")
        seen[r.name] = r.path


def _reference(runs: list[Run], baseline: str | None) -> str:
    if baseline is None:
        return runs[0].name
    for r in runs:
        if baseline in (r.name, str(r.path)) or Path(baseline).resolve() == r.path.resolve():
            return r.name
    raise UserError(f"--baseline {baseline!r} is not one of the runs; runs: {', '.join(r.name for r in runs)}")


def _check_syntax(by: Sequence[str]) -> None:
    for f in by:
        try:
            path, _ = split_bins(f)
        except ValueError as e:
            raise UserError(str(e)) from None
        if not path or any(not part for part in path.split(".")):
            raise UserError(f"--by {f!r}: not a field path; use patent_id or meta.NAME (dotted for nested fields)")


def _check_fields(by: Sequence[str], scored_samples: pl.DataFrame) -> None:
    for f in by:
        column = scored_samples.get_column(SLICE_PREFIX + f)
        if (column == NO_VALUE).all():
            raise UserError(f"--by {f}: no result row has this field; use patent_id or a meta.* path that the rows carry")


def _state_differences(comparisons: list[dict[str, Any]], infos: dict[str, dict[str, Any] | None]) -> None:
    """Each comparison says what differs between its two runs (evaluate.provenance's identity fields and
    the max_tokens budget): ``differs`` is a list of ``field: reference -> run`` lines, empty when the two
    were made the same way, None when a run has no run.json to tell (``differs_unknown`` names it)."""
    for c in comparisons:
        ref, run = infos[c["reference"]], infos[c["run"]]
        c["differs"] = comparison_differences(ref, run)
        c["differs_unknown"] = [name for name, info in ((c["reference"], ref), (c["run"], run)) if info is None]


def build_report(run_dirs: Sequence[str | Path], baseline: str | None = None, by: Sequence[str] = (),
                 bootstrap: int = 1000, seed: int = 0, risk_rule: str | None = None, pairs: str = "reference",
                 calibration: str | Path | None = None) -> Report:
    """Score run directories and build the report (nothing is written).

    ``baseline`` names the reference run (default: the first); ``by`` lists slice fields
    (``patent_id`` or ``meta.*`` paths); ``bootstrap`` resamples (0: no bootstrap intervals) with ``seed``;
    ``risk_rule`` names the rule (schemas.risk_rules) each run's ``risk_consistent`` is scored with;
    ``pairs`` which runs are compared (``reference``, ``within-arm``, ``all``: report_compare.run_pairs);
    ``calibration`` a file `evaluate calibrate` wrote on a dev run, applied to each run (evaluate.calibrate).
    """
    from . import calibrate
    from .calibration import paired_calibration
    from .conditions import speed_comparison

    cal_doc = None if calibration is None else calibrate.load(calibration)
    rule = None if risk_rule is None else risk_rules.risk_rule(risk_rule)
    if pairs not in PAIR_MODES:
        raise UserError(f"pairs: {pairs!r} is not one of {', '.join(PAIR_MODES)}")
    if not run_dirs:
        raise UserError("no run directories given; name at least one directory written by `evaluate batch`")
    if bootstrap < 0:
        raise UserError(f"bootstrap resamples must be 0 or more, not {bootstrap}")
    by = list(dict.fromkeys(by))
    _check_syntax(by)
    with gc_paused():  # many small objects, no cycles: the collector's passes would cost more than the work
        runs = _read_runs(run_dirs)
        _unique_names(runs)
        reference = _reference(runs, baseline)
        scored = score_runs(runs, by, risk_rule=rule)
        _check_fields(by, scored.samples)
        warnings = [w for r in runs for w in r.warnings]
        runs_m = run_metrics(runs, scored, by, warnings, risk_rule)
        if cal_doc is not None:
            for r in runs:
                runs_m[r.name]["calibrated"] = calibrate.apply(cal_doc, r.rows, r.name, str(calibration))
        names = [r.name for r in runs]
        pair_list = run_pairs(names, reference, pairs, {n: runs_m[n]["constrained"] for n in names})
        comparisons = compare_runs(scored, names, reference, bootstrap, seed, pairs=pair_list)
        _state_differences(comparisons, {r.name: r.info for r in runs})
        rows_of = {r.name: r.rows for r in runs}
        for c in comparisons:  # ECE and AURC paired, where both runs read label probabilities
            c["calibration"] = paired_calibration(rows_of[c["reference"]], rows_of[c["run"]], bootstrap, seed)
            ref_m, run_m = runs_m[c["reference"]], runs_m[c["run"]]  # a throughput ratio only in like conditions
            c["speed"] = speed_comparison(ref_m["speed"], run_m["speed"], ref_m["conditions"], run_m["conditions"])
    warnings += [f"{c['run']} vs {c['reference']}: {c['note']}" for c in comparisons if c["note"]]
    metrics: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reference": reference,
        "pairs": pairs,
        "risk_rule": risk_rule,
        "by": by,
        "bootstrap": {"resamples": bootstrap, "seed": seed},
        "warnings": warnings,
        "run_list": [{"name": r.name, "path": str(r.path), "schema": {k: runs_m[r.name]["schema"][k] for k in ("name", "hash")},
                      "constrained": runs_m[r.name]["constrained"],
                      "adapter_hash": runs_m[r.name]["provenance"].get("adapter_hash"),
                      "dataset_hash": runs_m[r.name]["provenance"].get("dataset_hash"),
                      "results_sha256": r.results_sha256} for r in runs],
        "runs": runs_m,
        "comparisons": comparisons,
    }
    blocks = build_document(metrics)
    summary = markdown_table(summary_table(metrics)) + "\n"
    if comparisons:
        summary += "\n" + "\n".join(f"- {comparison_sentence(c)} Differs: {differs_words(c)}." for c in comparisons) + "\n"
    return Report(metrics, summary, render_markdown(blocks), render_html(blocks), warnings)


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, baseline: str | None = None,
                 by: Sequence[str] = (), bootstrap: int = 1000, seed: int = 0, risk_rule: str | None = None,
                 pairs: str = "reference", calibration: str | Path | None = None) -> Report:
    """``build_report``, then write ``out_dir``/metrics.json, report.md and report.html (``out_dir`` is created)."""
    report = build_report(run_dirs, baseline=baseline, by=by, bootstrap=bootstrap, seed=seed, risk_rule=risk_rule,
                          pairs=pairs, calibration=calibration)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        report.metrics_path = out / METRICS_FILE
        report.markdown_path = out / MARKDOWN_FILE
        report.html_path = out / HTML_FILE
        report.metrics_path.write_text(json.dumps(report.metrics, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        report.markdown_path.write_text(report.markdown, encoding="utf-8")
        report.html_path.write_text(report.html, encoding="utf-8")
    except OSError as e:
        raise UserError(f"{out}: cannot write the report: {e.strerror}") from None
    return report
