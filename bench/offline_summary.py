"""What `evaluate bench` writes: a worker's result summarized, the ratios between configurations, whether their
raw outputs are identical, the Markdown table and the plot. Pure: plain dicts in, plain dicts (or files) out.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .offline_configs import CONFIGS


def outputs_hash(outputs: list[dict[str, Any]]) -> str:
    """sha256 (16 hex digits) of the (record id, raw output) pairs in order."""
    text = json.dumps([[o["record_id"], o["raw_output"]] for o in outputs], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _div(a: float | None, b: float | None, nd: int = 3) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, nd)


def _quantile(values: list[float | None] | None, q: float) -> float | None:
    """The q-quantile (nearest rank) of the values that are not None; None when there are none."""
    vals = sorted(v for v in (values or []) if v is not None)
    if not vals:
        return None
    return round(vals[min(len(vals) - 1, max(0, int(round(q * (len(vals) - 1)))))], 3)


def _mean(values: list[float] | None) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def count_valid(outputs: list[dict[str, Any]], schema_name: str) -> int:
    """Outputs whose raw text parses as a valid answer in the schema (evaluate.scoring.OutputParser)."""
    from patent_risk.evaluate.scoring import OutputParser

    parse = OutputParser()
    return sum(parse(o["raw_output"], schema_name).status == "valid" for o in outputs)


def summarize_run(raw: dict[str, Any], requests: list[dict[str, Any]] | None = None, schema_name: str = "v1") -> dict[str, Any]:
    """A worker's result as one row of the benchmark: throughput, validity, finish reasons, hash."""
    name = raw["config"]
    cfg = CONFIGS[name]
    base = {"config": name, "engine": cfg.engine, "adapter_mode": cfg.adapter_mode, "constrained": cfg.constrained,
            "backend": cfg.backend, "status": raw.get("status", "ok")}
    keep = ("worker_wall_s", "returncode", "log", "peak_pss_mb", "peak_pss_gen_mb", "memory_samples", "max_processes")
    if base["status"] != "ok":
        return {**base, "error": raw.get("error"), "log_tail": raw.get("log_tail"), **{k: raw.get(k) for k in keep}}
    outputs = raw["outputs"]
    valid = count_valid(outputs, schema_name)
    finish: dict[str, int] = {}
    for o in outputs:
        finish[o["finish_reason"]] = finish.get(o["finish_reason"], 0) + 1
    n = len(outputs)
    tokens = sum(o["output_tokens"] for o in outputs)
    gen_s = raw["gen_s"]
    row = {
        **base, "samples": n, "prompt_tokens": sum(o["prompt_tokens"] for o in outputs), "output_tokens": tokens,
        "cached_prompt_tokens": sum(o.get("cached_prompt_tokens", 0) for o in outputs),
        "max_tokens_total": sum(o["max_tokens"] for o in outputs),
        "load_s": round(raw["load_s"], 2), "gen_s": round(gen_s, 3),
        "output_tok_s": _div(tokens, gen_s, 2), "samples_s": _div(n, gen_s, 4),
        "compile_s": round(raw["compile_s"], 4) if raw.get("compile_s") is not None else None,
        "compile_setup_s": round(raw["compile_setup_s"], 3) if raw.get("compile_setup_s") is not None else None,
        "compile_what": raw.get("compile_what"), "distinct_schemas": raw.get("distinct_schemas"),
        "compile_measured_schemas": raw.get("compile_measured_schemas"),
        "compile_s_per_schema": _mean(raw.get("compile_per_schema_s")),
        "compile_s_per_schema_max": round(max(raw["compile_per_schema_s"]), 4) if raw.get("compile_per_schema_s") else None,
        "compile_s_per_schema_warm": _mean(raw.get("compile_per_schema_warm_s")),
        "ttft_s_median": _quantile([o.get("ttft_s") for o in outputs], 0.5),
        "ttft_s_p90": _quantile([o.get("ttft_s") for o in outputs], 0.9),
        "json_valid": round(valid / n, 4) if n else None, "json_valid_count": valid,
        "finish_reasons": dict(sorted(finish.items())), "outputs_sha256": outputs_hash(outputs),
        "engine_info": raw.get("engine_info"), "contention": raw.get("contention"),
        **_warm_fields(raw.get("warm"), n),
        **{k: raw.get(k) for k in keep},
    }
    if requests is not None:
        want = {r["record_id"]: r["max_tokens"] for r in requests}
        row["same_max_tokens"] = all(want.get(o["record_id"]) == o["max_tokens"] for o in outputs)
    return row


def _warm_fields(warm: dict[str, Any] | None, n: int) -> dict[str, Any]:
    """The warm pass's figures (None where the configuration had none: HF, or --no-warm-pass)."""
    if not warm:
        return {"gen_s_warm": None, "samples_s_warm": None, "output_tok_s_warm": None, "warm_same_outputs": None,
                "warm_finish_reasons": None, "ttft_s_median_warm": None, "ttft_s_p90_warm": None}
    return {"gen_s_warm": round(warm["gen_s"], 3), "samples_s_warm": _div(n, warm["gen_s"], 4),
            "ttft_s_median_warm": _quantile(warm.get("ttft_s"), 0.5), "ttft_s_p90_warm": _quantile(warm.get("ttft_s"), 0.9),
            "output_tok_s_warm": _div(warm["output_tokens"], warm["gen_s"], 2),
            "warm_same_outputs": warm["same_outputs"], "warm_finish_reasons": warm["finish_reasons"],
            "warm_cached_prompt_tokens": warm.get("cached_prompt_tokens"), "warm_contention": warm.get("contention")}


# (label, numerator config, denominator config, metrics)
RATIO_SPECS = (
    ("vLLM constrained over HF + outlines (per sample)", "vllm-outlines", "hf-outlines", ("samples_s", "output_tok_s")),
    ("constrained / unconstrained, vLLM + LoRA (outlines)", "vllm-outlines", "vllm",
     ("output_tok_s", "samples_s", "output_tok_s_warm", "samples_s_warm")),
    ("constrained / unconstrained, vLLM + LoRA (xgrammar)", "vllm-xgrammar", "vllm",
     ("output_tok_s", "samples_s", "output_tok_s_warm", "samples_s_warm")),
    ("constrained / unconstrained, vLLM + LoRA (guidance)", "vllm-guidance", "vllm",
     ("output_tok_s", "samples_s", "output_tok_s_warm", "samples_s_warm")),
    ("adapter as LoRA / merged, unconstrained", "vllm", "merged", ("output_tok_s", "samples_s")),
    ("adapter as LoRA / merged, constrained (outlines)", "vllm-outlines", "merged-outlines", ("output_tok_s", "samples_s")),
    ("adapter as LoRA / merged without torch.compile (the LoRA ops' own cost)", "vllm", "merged-eager", ("output_tok_s", "samples_s")),
    ("merged without / with torch.compile (the compile gain)", "merged-eager", "merged", ("output_tok_s", "samples_s")),
    ("vLLM + LoRA / HF + PEFT, unconstrained", "vllm", "hf", ("output_tok_s", "samples_s")),
    ("constrained / unconstrained, HF + PEFT", "hf-outlines", "hf", ("output_tok_s", "samples_s")),
    ("constrained / unconstrained, merged", "merged-outlines", "merged", ("output_tok_s", "samples_s")),
    ("with / without label probabilities, unconstrained", "vllm-probs", "vllm",
     ("output_tok_s", "samples_s", "output_tok_s_warm", "samples_s_warm")),
    ("with / without label probabilities, constrained (outlines)", "vllm-outlines-probs", "vllm-outlines",
     ("output_tok_s", "samples_s", "output_tok_s_warm", "samples_s_warm")),
)


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Throughput ratios between configurations that both ran successfully."""
    by = {r["config"]: r for r in runs if r.get("status") == "ok"}
    out = []
    for label, num, den, metrics in RATIO_SPECS:
        if num in by and den in by:
            for m in metrics:
                out.append({"ratio": label, "numerator": num, "denominator": den, "metric": m,
                            "value": _div(by[num].get(m), by[den].get(m))})
    return out


IDENTICAL_PAIRS = (("vllm", "merged"), ("vllm-outlines", "merged-outlines"), ("vllm", "hf"),
                   ("hf-outlines", "vllm-outlines"), ("vllm-outlines", "vllm-xgrammar"), ("vllm-outlines", "vllm-guidance"),
                   ("vllm", "vllm-probs"), ("vllm-outlines", "vllm-outlines-probs"))


def read_outputs(outputs_dir: Path, config: str) -> dict[str, str] | None:
    path = outputs_dir / f"{config}.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["record_id"]: r["raw_output"] for r in rows}


def compare_outputs(a: dict[str, str], b: dict[str, str]) -> dict[str, Any]:
    common = [k for k in a if k in b]
    same = sum(a[k] == b[k] for k in common)
    return {"compared": len(common), "identical": same, "share": round(same / len(common), 4) if common else None}


def identical_outputs(runs: list[dict[str, Any]], outputs_dir: Path) -> list[dict[str, Any]]:
    """How many raw outputs are byte-identical between pairs of configurations (on their common samples)."""
    ok = {r["config"] for r in runs if r.get("status") == "ok"}
    out = []
    for a, b in IDENTICAL_PAIRS:
        if a in ok and b in ok:
            oa, ob = read_outputs(outputs_dir, a), read_outputs(outputs_dir, b)
            if oa is not None and ob is not None:
                out.append({"a": a, "b": b, **compare_outputs(oa, ob)})
    return out


def progress_line(run: dict[str, Any]) -> str:
    if run.get("status") != "ok":
        return f"{run['config']}: FAILED ({run.get('error')}); log {run.get('log')}"
    comp = f", compile {run['compile_s']} s" if run.get("compile_s") is not None else ""
    warm = (f"; warm {run['gen_s_warm']:.1f} s ({run['samples_s_warm']} samples/s)"
            if run.get("gen_s_warm") is not None else "")
    return (f"{run['config']}: {run['samples']} samples, {run['output_tokens']} output tokens in {run['gen_s']:.1f} s "
            f"({run['output_tok_s']} tok/s, {run['samples_s']} samples/s){warm}, load {run['load_s']} s{comp}, "
            f"json_valid {run['json_valid']}, finish {run['finish_reasons']}, peak PSS {run['peak_pss_mb']:.0f} MB")


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def to_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# evaluate bench: {doc.get('data')} ({doc.get('created_at')})", "",
             f"base model `{doc.get('base_model')}`, adapter `{(doc.get('adapter') or {}).get('name')}`, schema "
             f"{doc.get('schema')}, --limit {doc.get('limit')}, --hf-limit {doc.get('hf_limit')} (hf-outlines), "
             f"--batch-size {doc.get('batch_size')} (hf)" + (", --own-ids (a schema per record)" if doc.get("own_ids") else ""),
             "",
             ""]
    from patent_risk.evaluate.report_doc import md_table

    headers = ["config", "engine", "adapter", "constraint", "samples", "distinct schemas", "output tokens", "load s", "gen s cold",
               "samples/s cold", "gen s warm", "samples/s warm", "output tok/s cold (warm)", "compile s per schema cold (warm)",
               "TTFT median s cold (warm)", "peak PSS MB (gen)", "json_valid", "finish reasons", "outputs hash", "others' CPU/wall"]
    rows = []
    for r in doc["runs"]:
        if r.get("status") != "ok":
            rows.append([r["config"], r["engine"], r["adapter_mode"], r["backend"] or "none", f"FAILED: {r.get('error')}"]
                        + [""] * (len(headers) - 5))
            continue
        comp = ("—" if r.get("compile_s") is None else
                f"{_fmt(r.get('compile_s_per_schema'))} ({_fmt(r.get('compile_s_per_schema_warm'))}); "
                f"+{_fmt(r.get('compile_setup_s'))} setup")
        finish = ", ".join(f"{k} {v}" for k, v in r["finish_reasons"].items())
        others = (r.get("contention") or {}).get("others_cpu_per_wall")
        warm_note = "" if r.get("warm_same_outputs") in (None, True) else " (other outputs!)"
        rows.append([r["config"], r["engine"], r["adapter_mode"], r["backend"] or "none", r["samples"],
                     _fmt(r.get("distinct_schemas")), r["output_tokens"], _fmt(r["load_s"]), _fmt(r["gen_s"]),
                     _fmt(r["samples_s"]), _fmt(r.get("gen_s_warm")), f"{_fmt(r.get('samples_s_warm'))}{warm_note}",
                     f"{_fmt(r['output_tok_s'])} ({_fmt(r.get('output_tok_s_warm'))})", comp,
                     f"{_fmt(r.get('ttft_s_median'))} ({_fmt(r.get('ttft_s_median_warm'))})",
                     f"{_fmt(r['peak_pss_mb'])} ({_fmt(r.get('peak_pss_gen_mb'))})",
                     _fmt(r["json_valid"]), finish, f"`{r['outputs_sha256']}`", _fmt(others)])
    lines.append(md_table(headers, rows, align="llll" + "r" * 13 + "llr"))
    if doc.get("ratios"):
        lines += ["", md_table(["ratio", "numerator / denominator", "metric", "value"],
                               [(q["ratio"], f"{q['numerator']} / {q['denominator']}", q["metric"], _fmt(q["value"]))
                                for q in doc["ratios"]], align="lllr")]
    if doc.get("identical_outputs"):
        lines += ["", md_table(["identical raw outputs", "compared", "identical", "share"],
                               [(f"{q['a']} vs {q['b']}", q["compared"], q["identical"], _fmt(q["share"]))
                                for q in doc["identical_outputs"]], align="lrrr")]
    if doc.get("merge"):
        lines += ["", f"Merged model: made once by `patent-risk train merge` in {_fmt(doc['merge'].get('merge_s'))} s "
                      f"({doc['merge'].get('path')})."]
    if doc.get("compile_what"):
        lines += ["", "compile s:"] + [f"- {k}: {v}" for k, v in doc["compile_what"].items()]
    if doc.get("notes"):
        lines += ["", "Notes:"] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in doc["runs"] if r.get("status") == "ok"]
    names = [r["config"] for r in runs]
    colors = ["tab:orange" if r["constrained"] else "tab:blue" for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, title in ((axes[0], "output_tok_s", "output tokens/s"), (axes[1], "samples_s", "samples/s"),
                           (axes[2], "peak_pss_mb", "peak PSS of the worker tree (MB)")):
        vals = [r.get(key) or 0 for r in runs]
        ax.bar(names, vals, color=colors)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        for lbl in ax.get_xticklabels():
            lbl.set_horizontalalignment("right")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("evaluate bench (blue: unconstrained, orange: constrained)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_bench(doc: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json", out / "bench.md", out / "bench.png"]
    paths[0].write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(to_markdown(doc), encoding="utf-8")
    plot(doc, paths[2])
    return paths
