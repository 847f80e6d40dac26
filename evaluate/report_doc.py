"""The report's content, built once from metrics.json as a list of blocks, and its Markdown rendering.

report.md and report.html render the same blocks (HTML adds figures), so they cannot drift apart,
and everything shown can be traced to a key of metrics.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence, Union

from patent_risk.schemas.labels import INVALID, MATCH_LABELS, RISK_LEVELS
from patent_risk.schemas.output import SCHEMA_SUMMARIES

from . import conditions
from .scoring import NO_VALUE, bin_labels, split_bins

MAX_LISTED = 50  # rows of a per-run list shown in the report; metrics.json has them all


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Text:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    row_headers: bool = False  # first column is a row label (shown bold)
    align: str | None = None  # Markdown only: one of l, r, c per column (default: the report's own layout)


@dataclass
class Figure:
    """A chart for the HTML report: ``kind`` is ``confusion`` or ``per_class``."""

    kind: str
    title: str
    data: dict[str, Any] = field(default_factory=dict)


Block = Union[Heading, Text, Bullets, Table, Figure]


def pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f}%"


def fmt_block(block: dict[str, Any] | None, interval: bool = False) -> str:
    """``91.8% (135/147)``, with `` [86.3, 95.3]`` when asked and known."""
    if not block:
        return "—"
    text = f"{pct(block['rate'])} ({block['count']}/{block['total']})"
    ci = block.get("ci95") if interval else None
    return f"{text} [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]" if ci else text


def fmt_pp(diff: float | None, ci: list[float] | None = None) -> str:
    if diff is None:
        return "—"
    text = f"{diff * 100:+.1f} pp"
    return f"{text} [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]" if ci else text


def fmt_num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4g}"


def run_label(name: str, entry: dict[str, Any]) -> str:
    """A run's column header: its name and its schema's name and hash, e.g. ``constrained (v1 #ab12cd34)``."""
    schema = entry.get("schema", {})
    return f"{name} ({schema.get('name', '?')} #{str(schema.get('hash', ''))[:8]})"


def _yes_no(value: Any) -> str:
    return "?" if value is None else ("yes" if value else "no")


HARDEST_RISK = "애매"  # the seed report's hardest class, often called 낮음: its recall is a column of its own


def recall_of(r: dict[str, Any], label: str = HARDEST_RISK) -> str:
    c = (r.get("risk_per_class") or {}).get(label)
    return "—" if not c or c["recall"] is None else f"{pct(c['recall'])} ({c['correct']}/{c['support']})"


def speed_of(r: dict[str, Any], key: str) -> str:
    value = (r.get("speed") or {}).get(key)
    return "—" if value is None else (f"{value:.1f}" if key == "output_tokens_per_sample" else f"{value:.3g}")


def summary_table(metrics: dict[str, Any]) -> Table:
    """Runs side by side (a row each) with the majority-class baseline over the same samples: validity,
    accuracy, 애매 recall, risk_consistent (with a risk rule), output tokens per sample and samples/s."""
    rows = []
    consistent = bool(metrics.get("risk_rule"))
    for name, r in metrics["runs"].items():
        rows.append([run_label(name, r), str(r["n"]), fmt_block(r["json_valid"]), fmt_block(r.get("record_valid")),
                     fmt_block(r["risk_accuracy"], True), fmt_block(r["match_accuracy"], True), recall_of(r),
                     *([fmt_block(r.get("risk_consistent"))] if consistent else []),
                     speed_of(r, "output_tokens_per_sample"), speed_of(r, "samples_per_s"), str(r["finish_length"])])
    baselines: dict[tuple, list[str]] = {}
    for name, r in metrics["runs"].items():
        mb = r.get("majority_baseline", {})
        key = tuple((k, mb[k]["label"], mb[k]["count"], mb[k]["total"]) for k in ("risk", "match") if k in mb) + ((r["n"],))
        baselines.setdefault(key, []).append(name)
    for key, names in baselines.items():
        r = metrics["runs"][names[0]]
        mb = r.get("majority_baseline", {})
        labels = " / ".join(mb[k]["label"] for k in ("risk", "match") if k in mb) or "no gold"
        scope = "" if len(baselines) == 1 else f", samples of {', '.join(names)}"
        majority_recall = "—"
        if mb.get("risk"):
            support = ((r.get("risk_per_class") or {}).get(HARDEST_RISK) or {}).get("support")
            if support:
                hit = support if mb["risk"]["label"] == HARDEST_RISK else 0
                majority_recall = f"{pct(hit / support)} ({hit}/{support})"
        rows.append([f"majority-class baseline (always {labels}{scope})", str(r["n"]), "—", "—",
                     fmt_block(mb.get("risk")), fmt_block(mb.get("match")), majority_recall,
                     *(["—"] if consistent else []), "—", "—", "—"])
    rule = metrics.get("risk_rule")
    return Table(["run", "n", "json_valid", "record_valid", "risk accuracy [95% CI]", "match accuracy [95% CI]",
                  f"{HARDEST_RISK} recall", *([f"risk_consistent ({rule})"] if consistent else []),
                  "output tokens / sample", "samples/s", "finish_reason=length"], rows, row_headers=True)


def schemas_table(metrics: dict[str, Any]) -> Table | None:
    """The runs' target schemas (name, hash, what each asks for), when the runs use more than one."""
    seen: dict[tuple[str, str], list[str]] = {}
    for name, r in metrics["runs"].items():
        seen.setdefault((r["schema"]["name"], r["schema"]["hash"]), []).append(name)
    if len(seen) < 2:
        return None
    rows = [[schema, f"#{h[:8]}", SCHEMA_SUMMARIES.get(schema, "?"), ", ".join(names)] for (schema, h), names in seen.items()]
    return Table(["schema", "hash", "asks for", "runs"], rows, row_headers=True)


def _overview(metrics: dict[str, Any]) -> Table:
    rows = []
    for name, r in metrics["runs"].items():
        p = r.get("provenance", {})
        adapter = p.get("adapter") or ("none" if p else "?")
        if p.get("adapter_hash"):
            adapter += f" #{str(p['adapter_hash'])[:8]}"
        dataset = p.get("dataset") or "?"
        if p.get("dataset_hash"):
            dataset += f" #{str(p['dataset_hash'])[:8]}"
        rows.append([name, f"{r['schema']['name']} #{r['schema']['hash'][:8]}", _yes_no(r.get("constrained")),
                     p.get("backend") or "—", p.get("base_model") or "?", adapter, dataset, p.get("engine") or "?",
                     str(r["n"]), r["results_sha256"][:12]])
    return Table(["run", "schema", "constrained", "backend", "base model", "adapter", "dataset", "engine", "samples",
                  "results sha256"], rows, row_headers=True)


def _side_by_side(metrics: dict[str, Any]) -> Table:
    runs = metrics["runs"]
    lines: list[tuple[str, Any]] = [
        ("schema", lambda r: f"{r['schema']['name']} #{r['schema']['hash'][:8]}"),
        ("constrained", lambda r: _yes_no(r.get("constrained"))),
        ("samples", lambda r: str(r["n"])),
        ("json_valid", lambda r: fmt_block(r["json_valid"], True)),
        ("record_valid (the record's ids, in order, each once)", lambda r: fmt_block(r.get("record_valid"))),
        ("parse failures", lambda r: str(r["parse_failures"])),
        ("schema failures", lambda r: str(r["schema_failures"])),
        ("finish_reason=length", lambda r: str(r["finish_length"])),
        ("not record_valid, by kind: truncated / not JSON / schema / wrong ids",
         lambda r: " / ".join(str(v) for v in r["invalid_kinds"].values()) if r.get("invalid_kinds") else "—"),
        ("risk accuracy", lambda r: fmt_block(r["risk_accuracy"], True)),
        ("match accuracy", lambda r: fmt_block(r["match_accuracy"], True)),
        (f"{HARDEST_RISK} recall", recall_of),
        *([(f"risk_consistent (own risk = {metrics['risk_rule']}(own matches))", lambda r: fmt_block(r.get("risk_consistent")))]
          if metrics.get("risk_rule") else []),
        ("output tokens / sample", lambda r: speed_of(r, "output_tokens_per_sample")),
        ("samples/s (generation wall time less grammar compile)", lambda r: speed_of(r, "samples_per_s")),
        ("output tokens/s", lambda r: speed_of(r, "output_tokens_per_s")),
        ("generation s (of which compiling new schemas)", lambda r: "—" if (r.get("speed") or {}).get("generation_s") is None
         else f"{r['speed']['generation_s']:.1f} ({speed_of(r, 'precompile_s')})"),
        ("speed conditions", lambda r: conditions.describe(r.get("conditions"))),
        ("risk macro-F1", lambda r: fmt_num(r["risk_macro_f1"])),
        ("match macro-F1", lambda r: fmt_num(r["match_macro_f1"])),
        ("unknown element ids", lambda r: str(r["unknown_element_ids"])),
        ("repeated element ids", lambda r: str(r["repeated_element_ids"])),
        ("elements missing from valid outputs", lambda r: str(r["missing_elements"])),
        ("samples without gold", lambda r: str(r["samples_without_gold"])),
    ]
    rows = [[label] + [get(r) for r in runs.values()] for label, get in lines]
    return Table(["metric"] + [run_label(n, r) for n, r in runs.items()], rows, row_headers=True)


def confusion_table(matrix: dict[str, dict[str, int]], labels: tuple[str, ...]) -> Table:
    """The seed report's layout: rows ``예측: X`` (and ``invalid``), columns ``정답: X``."""
    rows = [[f"예측: {p}"] + [str(matrix[p][g]) for g in labels] for p in (*labels, INVALID)]
    return Table([""] + [f"정답: {g}" for g in labels], rows, row_headers=True)


def _per_class_table(runs: dict[str, Any], level: str, labels: tuple[str, ...]) -> Table:
    rows = []
    for name, r in runs.items():
        for lab in labels:
            c = r[f"{level}_per_class"][lab]
            rows.append([name, lab, str(c["support"]), str(c["predicted"]), fmt_num(c["precision"]),
                         fmt_num(c["recall"]), fmt_num(c["f1"])])
        rows.append([name, "macro-F1", "", "", "", "", fmt_num(r[f"{level}_macro_f1"])])
    return Table(["run", level, "gold", "predicted", "precision", "recall", "F1"], rows)


def _slice_table(runs: dict[str, Any], key: str, first: str) -> Table:
    rows = []
    for value in slice_values(runs, key):
        for name, r in runs.items():
            s = r_get(r, key).get(value)
            if s:
                rows.append([value, name, str(s["n"]), fmt_block(s["json_valid"]), fmt_block(s["risk_accuracy"]),
                             fmt_block(s["match_accuracy"]), str(s.get("finish_length", "—"))])
    return Table([first, "run", "n", "json_valid", "risk accuracy", "match accuracy", "finish_reason=length"], rows)


def slice_values(runs: dict[str, Any], key: str) -> list[str]:
    """The values of a slice over all runs: bins in their order, numbers in numeric order, then text,
    ``(none)`` last."""
    _, edges = split_bins(key[len("slices."):]) if key.startswith("slices.") else (key, None)
    bins = {label: i for i, label in enumerate(bin_labels(edges))} if edges else {}

    def order(value: str) -> tuple[int, float, str]:
        if value == NO_VALUE:
            return (2, 0.0, value)
        if bins:  # a binned slice: its bins in order, then what was not a number
            return (0, bins[value], value) if value in bins else (1, 0.0, value)
        try:
            return (0, float(value), value)
        except ValueError:
            return (1, 0.0, value)
    return sorted({v for r in runs.values() for v in r_get(r, key)}, key=order)


def r_get(run: dict[str, Any], key: str) -> dict[str, Any]:
    """``per_patent`` or ``slices.FIELD`` of a run entry."""
    if key.startswith("slices."):
        return run.get("slices", {}).get(key[len("slices."):], {})
    return run.get(key, {})


def _esc(text: Any) -> str:
    return "" if text is None else str(text)


def _listed(total: int) -> list[Block]:
    return [Text(f"Showing {MAX_LISTED} of {total}; metrics.json lists them all.")] if total > MAX_LISTED else []


def _comparisons(metrics: dict[str, Any]) -> list[Block]:
    comps = metrics["comparisons"]
    if not comps:
        return []
    runs = metrics["runs"]
    mode = metrics.get("pairs", "reference")
    title = {"reference": f"Comparisons against {metrics['reference']}",
             "within-arm": "Paired comparisons within each arm (constrained with constrained, unconstrained with unconstrained)",
             "all": "Paired comparisons, every pair"}[mode]
    blocks: list[Block] = [Heading(2, title),
                           Text("Paired, on the samples both runs have. McNemar b: right in the reference only, "
                                "c: right in the run only. Intervals: paired bootstrap over samples "
                                f"({comps[0]['bootstrap']['resamples']} resamples, seed {comps[0]['bootstrap']['seed']}); "
                                "differences are run minus reference"
                                + ("." if mode == "reference" else " (in a pair A vs B, B is the run and A the reference)."))]
    rows = []
    for c in comps:
        mc = c["risk_accuracy"]["mcnemar"]
        first = (run_label(c["run"], runs[c["run"]]) if mode == "reference"
                 else f"{run_label(c['run'], runs[c['run']])} vs {run_label(c['reference'], runs[c['reference']])}")
        rows.append([first, f"{c['samples']['common']} ({c['samples']['compared']} with the same gold)",
                     fmt_pp(c["json_valid"]["difference"]), fmt_pp(c["risk_accuracy"]["difference"], c["risk_accuracy"]["ci95"]),
                     f"{mc['b']} / {mc['c']}", fmt_p(mc["p_value"]),
                     fmt_pp(c["match_accuracy"]["difference"], c["match_accuracy"]["ci95"]), str(len(c["flipped"]))])
    blocks.append(Table(["run vs " + metrics["reference"] if mode == "reference" else "run vs reference", "common samples", "json_valid gain", "risk accuracy Δ [95% CI]",
                         "McNemar b / c", "p (exact)", "match accuracy Δ [95% CI]", "flipped"], rows, row_headers=True))
    blocks.append(Bullets([comparison_sentence(c) for c in comps]))
    cal_rows = []
    for c in comps:
        for key, label in CALIBRATION_FIELDS:
            f = (c.get("calibration") or {}).get(key)
            if f:
                cal_rows.append([f"{c['run']} vs {c['reference']}", label, str(f["decisions"]),
                                 f"{fmt_num(f['ece']['reference'])} -> {fmt_num(f['ece']['run'])}", _ci_num(f["ece"]),
                                 f"{fmt_num(f['aurc']['reference'])} -> {fmt_num(f['aurc']['run'])}", _ci_num(f["aurc"])])
    if cal_rows:
        blocks += [Text("Calibration, paired on the decisions both runs read (lower is better for both): ECE and AURC, "
                        "reference -> run, and the difference's paired bootstrap 95% interval."),
                   Table(["pair", "field", "decisions", "ECE", "ECE Δ [95% CI]", "AURC", "AURC Δ [95% CI]"], cal_rows)]
    blocks += _speed_ratios(comps)
    blocks.append(Heading(3, "What differs between the compared runs"))
    blocks.append(Bullets([f"{c['run']} vs {c['reference']}: {differs_words(c)}" for c in comps]))
    for c in comps:
        if not c["flipped"]:
            continue
        blocks.append(Heading(3, f"Flipped samples: {c['run']} vs {c['reference']}"))
        rows = [[f["id"], f["gold"], f["reference_predicted"], f["run_predicted"], f["direction"]] for f in c["flipped"][:MAX_LISTED]]
        blocks.append(Table(["id", "gold", f"{c['reference']} predicted", f"{c['run']} predicted", "run is"], rows))
        blocks += _listed(len(c["flipped"]))
    return blocks


def _speed_ratios(comps: list[dict[str, Any]]) -> list[Block]:
    """Each pair's throughput: a ratio where the two runs were measured alike, else both figures and what
    differs (evaluate.conditions): a prefix cache one run found full makes its prefill nearly free."""
    lines = []
    for c in comps:
        sp = c.get("speed")
        if not sp or sp["reference_samples_per_s"] is None or sp["run_samples_per_s"] is None:
            continue
        figures = f"{fmt_num(sp['run_samples_per_s'])} vs {fmt_num(sp['reference_samples_per_s'])} samples/s"
        if sp["ratio"] is not None:
            lines.append(f"{c['run']} vs {c['reference']}: {figures}: {sp['ratio']:.2f}x (measured alike)")
        else:
            lines.append(f"{c['run']} vs {c['reference']}: {figures}; no ratio: not measured alike "
                         f"({'; '.join(sp['conditions_differ'])})")
    if not lines:
        return []
    return [Heading(3, "Throughput"), Bullets(lines)]


def _ci_num(block: dict[str, Any]) -> str:
    ci = block.get("ci95")
    return f"{block['difference']:+.3f}" + ("" if not ci else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]")


def differs_words(c: dict[str, Any]) -> str:
    """A comparison's ``differs`` in words: each differing run.json field, reference -> run."""
    if c.get("differs") is None:
        missing = c.get("differs_unknown") or []
        return (f"unknown: {' and '.join(missing)} {'has' if len(missing) == 1 else 'have'} no run.json to tell "
                "(pairing is by sample id and gold only)")
    if not c["differs"]:
        return "nothing in run.json (same model, adapter, data, schema, prompt, constraint, sampling and engine)"
    return "; ".join(c["differs"])


def _ci_words(ci: list[float] | None) -> str:
    return f" (95% CI {ci[0] * 100:+.1f} to {ci[1] * 100:+.1f} pp)" if ci else ""


def comparison_sentence(c: dict[str, Any]) -> str:
    """What a comparison says, in words: did the run change json_valid, risk and match accuracy."""
    risk, match, valid = c["risk_accuracy"], c["match_accuracy"], c["json_valid"]
    p = risk["mcnemar"]["p_value"]
    verdict = "a significant change" if p < 0.05 else "no significant change"
    ci = match["ci95"]
    match_verdict = "" if not ci else ("; the interval excludes 0" if ci[0] > 0 or ci[1] < 0 else "; the interval includes 0")
    vm = valid.get("mcnemar")
    valid_test = (f" (McNemar exact p = {fmt_p(vm['p_value'])}, b = {vm['b']}, c = {vm['c']})"
                  if vm and (vm["b"] or vm["c"]) else "")
    text = (f"{c['run']} vs {c['reference']}: json_valid {fmt_block(valid['reference'])} → {fmt_block(valid['run'])}{valid_test}; "
            f"risk accuracy {fmt_pp(risk['difference'])}{_ci_words(risk['ci95'])}, McNemar exact p = {fmt_p(p)} "
            f"(b = {risk['mcnemar']['b']}, c = {risk['mcnemar']['c']}): {verdict} at the 5% level; "
            f"match accuracy {fmt_pp(match['difference'])}{_ci_words(ci)}{match_verdict}.")
    return text + (f" Note: {c['note']}." if c.get("note") else "")


def _per_run_lists(runs: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Error patterns (risk_level, gold → predicted)")]
    for name, r in runs.items():
        blocks.append(Heading(3, name))
        rows = [[f"{p['gold_risk']} → {p['pred_risk']}", str(p["count"]), pct(p["share"]), pct(p["share_of_valid"]),
                 ", ".join(p["example_ids"])] for p in r["error_patterns"]]
        blocks.append(Table(["gold → predicted", "cases", "share of errors", "share of errors among valid outputs", "example ids"], rows)
                      if rows else Text("No risk errors."))
    blocks.append(Heading(2, "Risk errors"))
    for name, r in runs.items():
        cases = r["error_cases"]
        blocks.append(Heading(3, f"{name} ({len(cases)})"))
        rows = [[c["id"], _esc(c["patent_id"]), _esc(c["query"]), c["predicted"], c["gold"]]
                for c in cases[:MAX_LISTED]]
        blocks.append(Table(["id", "patent", "query", "predicted", "gold"], rows) if rows else Text("None."))
        blocks += _listed(len(cases))
    blocks.append(Heading(2, "Invalid outputs"))
    for name, r in runs.items():
        bad = r["invalid_outputs"]
        blocks.append(Heading(3, f"{name} ({len(bad)}: {r['parse_failures']} parse, {r['schema_failures']} schema)"))
        rows = [[b["id"], b["kind"], _esc(b["finish_reason"]), _esc(b["error"]), _esc(b["output_head"])] for b in bad[:MAX_LISTED]]
        blocks.append(Table(["id", "failure", "finish_reason", "problem", "output (first 200 characters)"], rows) if rows else Text("None."))
        blocks += _listed(len(bad))
    return blocks


def build_document(metrics: dict[str, Any]) -> list[Block]:
    """Every section of the report, in order, from a metrics.json document."""
    runs = metrics["runs"]
    blocks: list[Block] = [
        Heading(1, "Evaluation report"),
        Text(f"Generated {metrics['generated_at']}; {len(runs)} run(s); reference run: {metrics['reference']}."),
    ]
    if metrics["warnings"]:
        blocks += [Heading(2, "Warnings"), Bullets(metrics["warnings"])]
    blocks += [Heading(2, "Summary"), summary_table(metrics)]
    if metrics.get("risk_rule"):
        blocks.append(Text(f"risk_consistent: valid outputs whose own risk_level is what their own matches imply under "
                           f"the {metrics['risk_rule']} rule (schemas/risk_rules.py); the risk scored is always the "
                           "model's own. Output tokens per sample from results.jsonl; samples/s over run.json's "
                           "generation_s less precompile_s (generation wall time, no engine start, without compiling "
                           "the run's new outlines schemas: shown in Side by side, once per schema; other backends "
                           "compile inside it). Speeds are put as a ratio only between runs measured alike (Comparisons)."))
    schemas = schemas_table(metrics)
    if schemas is not None:
        blocks += [Heading(2, "Schemas"), schemas]
    blocks += [Heading(2, "Runs"), _overview(metrics),
               Heading(2, "Side by side"), _side_by_side(metrics)]
    blocks += _comparisons(metrics)
    blocks += _calibration(runs)
    blocks.append(Heading(2, "Confusion matrices"))
    for name, r in runs.items():
        blocks.append(Heading(3, run_label(name, r)))
        for level, labels in (("risk", RISK_LEVELS), ("match", MATCH_LABELS)):
            blocks.append(Text(f"{level}_level confusion ({name}):" if level == "risk" else f"match confusion ({name}):"))
            blocks.append(confusion_table(r[f"{level}_confusion"], labels))
            blocks.append(Figure("confusion", f"{name}: {level}", {"matrix": r[f"{level}_confusion"], "labels": list(labels)}))
    blocks.append(Heading(2, "Per-class precision, recall and F1"))
    for level, labels in (("risk", RISK_LEVELS), ("match", MATCH_LABELS)):
        blocks.append(_per_class_table(runs, level, labels))
        blocks.append(Figure("per_class", f"{level}: F1 per class", {
            "labels": list(labels), "runs": {n: {lab: r[f"{level}_per_class"][lab] for lab in labels} for n, r in runs.items()}}))
    blocks += [Heading(2, "Per patent"), _slice_table(runs, "per_patent", "patent")]
    for f in metrics["by"]:
        blocks += [Heading(2, f"Slices by {f}"), _slice_table(runs, f"slices.{f}", f)]
        for value in slice_values(runs, f"slices.{f}"):
            blocks.append(Heading(3, f"{f} = {value}"))
            for name, r in runs.items():
                s = r_get(r, f"slices.{f}").get(value)
                if s:
                    blocks += [Text(f"{name}: risk_level confusion, then match confusion ({s['n']} samples)"),
                               confusion_table(s["risk_confusion"], RISK_LEVELS), confusion_table(s["match_confusion"], MATCH_LABELS)]
    blocks += _per_run_lists(runs)
    return blocks


CALIBRATION_FIELDS = (("risk_level", "risk_level"), ("match", "match (each element)"))


def _calibration(runs: dict[str, Any]) -> list[Block]:
    """How sure the model was, and whether that means something: per run and field, ECE, Brier, AURC and what a
    confidence threshold would keep at 95% accuracy; a reliability diagram per run and field, a risk-coverage
    chart per field. Nothing when no run has label probabilities."""
    have = {n: r["calibration"] for n, r in runs.items() if r.get("calibration")}
    if not have:
        return []
    blocks: list[Block] = [Heading(2, "Confidence and calibration"), Text(
        "At each decision the model's probability of each label (runtime/label_probs.py): confidence is the "
        "probability of the label it wrote. ECE: 10 equal-width confidence bins, |accuracy - confidence| weighted by "
        "share (0 is calibrated). Brier: squared distance of the label probabilities from the gold label (a uniform "
        "guess over 3 labels: 0.667). AURC: mean error of the decisions kept, most confident first, over every "
        "coverage (lower is better; a model that answers a constant has nothing to rank and scores its error rate). "
        "Keep @95%: the share of decisions a confidence threshold keeps with at least 95% accuracy among them, the rest "
        "to a person. Later decisions of an answer are conditional on its earlier ones.")]
    rows = []
    for name, c in have.items():
        for key, label in CALIBRATION_FIELDS:
            f = c[key]
            keep = next((k for k in f["keep_at_accuracy"] if k["accuracy"] == 0.95), None)
            kept = "—" if keep is None or not keep["kept"] else f"{pct(keep['coverage'])} (≥ {fmt_num(keep['threshold'])})"
            rows.append([name, label, str(f["decisions"]), pct(f["accuracy"]), fmt_num(f["mean_confidence"]),
                         fmt_num(f["ece"]), fmt_num(f["brier"]), fmt_num(f["aurc"]), kept])
    blocks.append(Table(["run", "field", "decisions", "accuracy", "mean confidence", "ECE", "Brier", "AURC", "keep @95%"], rows))
    notes = [f"{n}: {c['rows_without_decision_points']} row(s) without decision points (not valid JSON), "
             f"{c['decisions_unread']} decision(s) unread" for n, c in have.items()
             if c["rows_without_decision_points"] or c["decisions_unread"]]
    notes += [f"{n}: {c['rows_without_probabilities']} row(s) whose engine returned no label probabilities (a server "
              "that refuses or ignores vLLM's logprob_token_ids; the rows say why)" for n, c in have.items()
              if c.get("rows_without_probabilities")]
    if notes:
        blocks.append(Bullets(notes))
    blocks += _calibrated(runs)
    for key, label in CALIBRATION_FIELDS:
        for name, c in have.items():
            if c[key]["decisions"]:
                blocks.append(Figure("reliability", f"{name}: {label}, reliability", {"bins": c[key]["ece_bins"]}))
        blocks.append(Figure("risk_coverage", f"{label}: risk-coverage", {"runs": {
            n: {**c[key]["risk_coverage"], "aurc": c[key]["aurc"]} for n, c in have.items() if c[key]["decisions"]}}))
    return blocks


def _calibrated(runs: dict[str, Any]) -> list[Block]:
    """The dev-fitted rule (`evaluate calibrate`, `--calibration FILE`) applied to each run."""
    have = {n: r["calibrated"] for n, r in runs.items() if r.get("calibrated")}
    if not have:
        return []
    source = next(iter(have.values()))["source"]
    blocks: list[Block] = [Heading(3, "Calibrated on a dev run"), Text(
        f"{source}: temperature scaling per field and a confidence threshold, fitted on a dev run (never this one), "
        "applied here. Kept: the decisions at or above the threshold, with their accuracy; the rest go to a person. "
        "애매 rule: risk_level called 애매 whenever its probability reaches the threshold.")]
    rows, amb_rows = [], []
    for name, c in have.items():
        for key, label in CALIBRATION_FIELDS:
            f = c.get(key)
            if not f:
                continue
            rule = f.get("threshold_rule")
            kept = "—" if not rule else (f"{pct(rule['coverage'])} at ≥ {fmt_num(rule['threshold'])}: "
                                         f"{pct(rule['accuracy_kept'])} right (dev target {pct(rule['dev_accuracy_target'])})")
            rows.append([name, label, fmt_num(f["temperature"], 2), fmt_num(f["ece"]), fmt_num(f["brier"]), fmt_num(f["aurc"]), kept])
            amb = f.get("ambiguous_rule")
            if amb:
                amb_rows.append([name, fmt_num(amb["threshold"]), f"{pct(amb['recall_written'])} -> {pct(amb['recall'])}",
                                 f"{pct(amb['accuracy_written'])} -> {pct(amb['accuracy'])}", str(amb["other_called_ambiguous"])])
    blocks.append(Table(["run", "field", "T", "ECE", "Brier", "AURC", "kept"], rows))
    if amb_rows:
        blocks.append(Table(["run", "P(애매) ≥", "애매 recall", "risk accuracy", "others called 애매"], amb_rows))
    return blocks


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "⏎")


_ALIGN = {"l": "---", "r": "---:", "c": ":---:"}


def markdown_table(table: Table) -> str:
    """A GitHub-flavoured Markdown table, cells escaped (``|``, newlines); the first column in bold when it holds
    row labels. The one Markdown table writer: reports, learning curves and benchmarks all use it."""
    if table.align is not None:
        if len(table.align) != len(table.headers):
            raise ValueError(f"align {table.align!r}: one letter per column ({len(table.headers)})")
        rule = [_ALIGN[a] for a in table.align]
    else:
        rule = ["---" if i == 0 and table.row_headers else ":---:" if table.row_headers else "---"
                for i in range(len(table.headers))]
    out = ["| " + " | ".join(_md_cell(h) for h in table.headers) + " |", "|" + "|".join(rule) + "|"]
    for row in table.rows:
        cells = [_md_cell(c) for c in row]
        if table.row_headers and cells and cells[0]:
            cells[0] = f"**{cells[0]}**"
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """``markdown_table`` for plain rows (values shown with ``str``); ``align``: l, r or c per column."""
    return markdown_table(Table(list(headers), [[str(c) for c in row] for row in rows], align=align))


def render_markdown(blocks: list[Block]) -> str:
    """The blocks as Markdown (figures are HTML-only and left out)."""
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append("#" * b.level + " " + b.text)
        elif isinstance(b, Text):
            parts.append(b.text)
        elif isinstance(b, Bullets):
            parts.append("\n".join(f"- {_md_cell(i)}" for i in b.items))
        elif isinstance(b, Table):
            parts.append(markdown_table(b))
    return "\n\n".join(parts) + "\n"
