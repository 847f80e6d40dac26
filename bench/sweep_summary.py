"""What `evaluate constraint-cost` writes: each point's passes summarized (median samples/s of each arm and its
spread, the constrained / unconstrained ratio and the per-repeat paired ratios), the Markdown table and the
plot. Pure: plain dicts in, plain dicts (or files) out.
"""
from __future__ import annotations

import json
from pathlib import Path
from statistics import median
from typing import Any

ARMS = ("unconstrained", "constrained")
GOAL = 0.9  # the project's goal: constrained >= 0.9x unconstrained (issue 34)
CONTENDED = 0.2  # others' CPU per wall second above which a pass is marked contended


def point_key(backend: str, batch: int) -> str:
    return f"{backend}-b{batch}"


def pass_order(repeats: int) -> list[tuple[int, str]]:
    """(repeat, arm) in the order they run: the arms alternate which goes first, so that a drift of the
    machine over a point's minutes falls on both arms alike."""
    order: list[tuple[int, str]] = []
    for r in range(repeats):
        arms = ARMS if r % 2 == 0 else ARMS[::-1]
        order.extend((r, arm) for arm in arms)
    return order


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def decode_s(p: dict[str, Any]) -> float:
    """A pass's generation time less the outlines compile-ahead inside it (warm: lookups only)."""
    return max(1e-9, p["gen_s"] - (p.get("precompile_s") or 0.0))


def summarize_arm(passes: list[dict[str, Any]], valid: int | None) -> dict[str, Any]:
    rates = [p["samples"] / decode_s(p) for p in passes]
    toks = [p["output_tokens"] / decode_s(p) for p in passes]
    med = median(rates)
    contention = [p.get("contention", {}).get("others_cpu_per_wall") for p in passes]
    contention = [c for c in contention if c is not None]
    return {
        "passes": len(passes), "samples": passes[0]["samples"],
        "samples_s": _r(med), "samples_s_min": _r(min(rates)), "samples_s_max": _r(max(rates)),
        "spread": _r((max(rates) - min(rates)) / med if med else None),  # (max - min) / median
        "samples_s_each": [_r(x) for x in rates],
        "output_tok_s": _r(median(toks), 1),
        "output_tokens": passes[0]["output_tokens"],
        "prompt_tokens": passes[0]["prompt_tokens"],
        "cached_prompt_tokens": [p["cached_prompt_tokens"] for p in passes],
        "prefix_cache": sorted({p["prefix_cache"] for p in passes}),
        "precompile_s": _r(sum(p.get("precompile_s") or 0.0 for p in passes)),
        "same_outputs": len({p["outputs_sha256"] for p in passes}) == 1,  # greedy: every repeat the same text
        "finish_reasons": passes[0]["finish_reasons"],
        "json_valid": _r(valid / passes[0]["samples"]) if valid is not None else None,
        "others_cpu_per_wall_max": _r(max(contention)) if contention else None,
    }


def summarize_point(raw: dict[str, Any], valid: dict[str, int | None] | None = None) -> dict[str, Any]:
    """One point (backend x batch size) from its worker's result: both arms over their repeats, their ratio."""
    base = {k: raw.get(k) for k in ("backend", "batch", "records", "repeats", "status", "load_s", "grammar_warmup", "first_pass",
                                    "machine", "started_at", "engine_info", "label_probs")}
    if raw.get("status") != "ok":
        return {**base, "error": raw.get("error"), "log_tail": raw.get("log_tail")}
    passes = raw["passes"]
    arms = {arm: summarize_arm([p for p in passes if p["arm"] == arm], (valid or {}).get(arm)) for arm in ARMS}
    by_repeat: dict[int, dict[str, dict[str, Any]]] = {}
    for p in passes:
        by_repeat.setdefault(p["repeat"], {})[p["arm"]] = p
    paired = [(rep["constrained"]["samples"] / decode_s(rep["constrained"]))
              / (rep["unconstrained"]["samples"] / decode_s(rep["unconstrained"]))
              for _, rep in sorted(by_repeat.items()) if set(rep) == set(ARMS)]
    u, c = arms["unconstrained"]["samples_s"], arms["constrained"]["samples_s"]
    ratio = c / u if u else None
    tok_ratio = (arms["constrained"]["output_tok_s"] / arms["unconstrained"]["output_tok_s"]
                 if arms["unconstrained"]["output_tok_s"] else None)
    contended = [a["others_cpu_per_wall_max"] for a in arms.values() if a["others_cpu_per_wall_max"] is not None]
    return {**base, "arms": arms, "ratio": _r(ratio), "output_tok_s_ratio": _r(tok_ratio),
            "paired_ratios": [_r(x) for x in paired],
            "paired_ratio_min": _r(min(paired)) if paired else None,
            "paired_ratio_max": _r(max(paired)) if paired else None,
            "meets_goal": None if ratio is None else ratio >= GOAL,
            "contended": bool(contended) and max(contended) > CONTENDED}


def progress_line(point: dict[str, Any]) -> str:
    if point.get("status") != "ok":
        return f"failed: {point.get('error')}"
    u, c = point["arms"]["unconstrained"], point["arms"]["constrained"]
    return (f"unconstrained {u['samples_s']} samples/s ({u['samples_s_min']}-{u['samples_s_max']}), "
            f"constrained {c['samples_s']} ({c['samples_s_min']}-{c['samples_s_max']}): ratio {point['ratio']} "
            f"(paired {point['paired_ratio_min']}-{point['paired_ratio_max']})"
            + ("; CONTENDED: other processes used the CPU" if point["contended"] else ""))


def _span(a: dict[str, Any]) -> str:
    return f"{a['samples_s']} ({a['samples_s_min']}-{a['samples_s_max']})"


def to_markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Constrained vs unconstrained throughput (`evaluate constraint-cost`)", "",
        f"- created {doc['created_at']}, finished {doc.get('finished_at') or 'not yet (partial)'}",
        f"- machine: {doc['machine']['cpu']}, {doc['machine']['cpus']} CPUs" + (f", GPU {doc['machine']['gpu']}" if doc["machine"].get("gpu") else ""),
        f"- model {doc['base_model']}, adapter {doc['adapter']['name']} ({doc['adapter']['path']}), schema {doc['schema']}",
        f"- data {doc['data']}: the first {doc['limit']} records"
        + (", at batch sizes " + ", ".join(f"{b}: {n}" for b, n in sorted(doc["limit_at"].items(), key=lambda kv: int(kv[0])))
           if doc["limit_at"] else ""),
        f"- {doc['repeats']} repeats per arm per point, arms alternating; max_model_len {doc['max_model_len']}; "
        f"label probabilities {'read in both arms' if doc['label_probs'] else 'off'}",
        "",
        "samples/s: median over the repeats (min-max), generation time less the outlines compile-ahead (every grammar "
        "already cached); ratio: constrained median over unconstrained median; paired: each repeat's ratio of its "
        "two adjacent passes.", "",
        "| backend | batch (max_num_seqs) | records | unconstrained samples/s | constrained samples/s | ratio | paired ratios "
        "| output tok/s ratio | output tokens (unc / con) | >= 0.9x |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in doc["points"]:
        if p.get("status") != "ok":
            lines.append(f"| {p['backend']} | {p['batch']} | {p.get('records')} | failed: {p.get('error')} | | | | | | |")
            continue
        u, c = p["arms"]["unconstrained"], p["arms"]["constrained"]
        mark = "yes" if p["meets_goal"] else "no"
        if p["contended"]:
            mark += " (contended)"
        lines.append(f"| {p['backend']} | {p['batch']} | {p['records']} | {_span(u)} | {_span(c)} | {p['ratio']} "
                     f"| {p['paired_ratio_min']}-{p['paired_ratio_max']} | {p['output_tok_s_ratio']} "
                     f"| {u['output_tokens']} / {c['output_tokens']} | {mark} |")
    for p in doc["points"]:
        if p.get("profile"):
            lines += [""] + profile_markdown(p)
    lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    problems = [f"{point_key(p['backend'], p['batch'])}: {arm} outputs differ between repeats"
                for p in doc["points"] if p.get("status") == "ok" for arm in ARMS if not p["arms"][arm]["same_outputs"]]
    if problems:
        lines += ["", "## Warnings", ""] + [f"- {x}" for x in problems]
    return "\n".join(lines) + "\n"


def profile_markdown(point: dict[str, Any], top: int = 12) -> list[str]:
    """A profiled point: the functions whose inclusive CPU time grew most under the constraint, and the heaviest
    functions by self time in the constrained arm (bench.stacks.compare)."""
    prof = point["profile"]
    passes = prof.get("passes", {})
    lines = [f"## Where the time goes: {point['backend']} at batch {point['batch']}", "",
             f"py-spy at {prof['rate']} samples/s over one more, untimed pass per arm (the front end, vLLM's engine core "
             f"and its worker; running threads only). CPU-active seconds: unconstrained {prof['cpu_s']['unconstrained']} "
             f"(pass {passes.get('unconstrained', {}).get('gen_s')} s), constrained {prof['cpu_s']['constrained']} "
             f"(pass {passes.get('constrained', {}).get('gen_s')} s).", "",
             "| function (inclusive) | unconstrained s | constrained s | extra s |", "|---|---|---|---|"]
    for f in prof["grew_most"][:top]:
        lines.append(f"| `{f['function']}` | {f['unconstrained_s']} | {f['constrained_s']} | {f['extra_s']} |")
    lines += ["", "| constrained arm, by self time | self s | share |", "|---|---|---|"]
    for f in prof["self_top"]["constrained"][:top]:
        lines.append(f"| `{f['function']}` | {f['self_s']} | {f['share']} |")
    return lines


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in doc["points"] if p.get("status") == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for backend in dict.fromkeys(p["backend"] for p in points):
        ps = sorted((p for p in points if p["backend"] == backend), key=lambda p: p["batch"])
        xs = [p["batch"] for p in ps]
        ys = [p["ratio"] for p in ps]
        lo = [max(0.0, p["ratio"] - (p["paired_ratio_min"] or p["ratio"])) for p in ps]
        hi = [max(0.0, (p["paired_ratio_max"] or p["ratio"]) - p["ratio"]) for p in ps]
        axes[0].errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=backend)
        for arm, style in (("unconstrained", "--"), ("constrained", "-")):
            axes[1].plot(xs, [p["arms"][arm]["samples_s"] for p in ps], style, marker="o", label=f"{backend} {arm}")
    axes[0].axhline(GOAL, color="grey", linestyle=":", label=f"goal {GOAL}x")
    axes[0].set_title("constrained / unconstrained samples/s (bars: paired min-max)", fontsize=9)
    axes[1].set_title("samples/s (median over repeats)", fontsize=9)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch (max_num_seqs)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_sweep(doc: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "sweep.json", out / "sweep.md", out / "sweep.png"]
    paths[0].write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(to_markdown(doc), encoding="utf-8")
    plot(doc, paths[2])
    return paths
