"""`evaluate bench`: one invocation, the same samples, base model, adapter and max_tokens, through
every way this project can generate, each configuration in its own worker process, one after another.

Configurations (``bench.offline_configs.CONFIGS``):

- ``hf``: HF transformers ``generate`` + the PEFT adapter, batched (left padding), unconstrained;
- ``hf-outlines``: HF + PEFT + the outlines library's JSON-schema logits processor (llguidance
  backend), one record at a time (each record has its own schema);
- ``vllm``: vLLM offline, the adapter as a LoRA module, unconstrained;
- ``vllm-outlines`` / ``vllm-xgrammar`` / ``vllm-guidance``: the same, constrained, with that
  structured-outputs backend;
- ``merged`` / ``merged-outlines``: the adapter merged into the base (``patent-risk train merge``, once, into a
  temporary folder), served by vLLM without LoRA, unconstrained / constrained (outlines).

Every configuration runs as ``python -m patent_risk.bench.worker --config NAME --spec spec.json --out
result.json``; the parent samples the PSS of the worker's process tree (vLLM's engine core is a
child process) every 0.2 s (runtime.procs, psutil). The parent never imports torch or vLLM.

What it writes (summaries, ratios, identical outputs, Markdown, plot): bench.offline_summary.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from patent_risk.runtime.procs import TreeMemorySampler
from patent_risk.schemas.errors import UserError

from .offline_configs import COMPILE_WHAT, CONFIGS, PREPARE, BenchOptions, phase_file, samples_for
from .offline_summary import identical_outputs, progress_line, ratios, summarize_run, write_bench

# --------------------------------------------------------------------------
# Running workers
# --------------------------------------------------------------------------


def _run_worker(config: str, spec_path: Path, workdir: Path) -> dict[str, Any]:
    """One worker process; returns its result dict with the parent's measurements added."""
    out = workdir / f"{config}.result.json"
    phase = phase_file(out)
    log_path = workdir / f"{config}.log"
    for p in (out, phase):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "patent_risk.bench.worker", "--config", config, "--spec", str(spec_path), "--out", str(out)]
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
        with TreeMemorySampler(proc.pid, phase) as mem:
            rc = proc.wait()
    wall = time.perf_counter() - t0
    measured = {"worker_wall_s": round(wall, 2), "returncode": rc, "log": str(log_path),
                "peak_pss_mb": round(mem.peak / 2**20, 1), "peak_pss_gen_mb": round(mem.peak_gen / 2**20, 1) or None,
                "memory_samples": mem.samples, "max_processes": mem.max_processes}
    if rc != 0 or not out.exists():
        return {"config": config, "status": "failed", **worker_failure(log_path, rc), **measured}
    result = json.loads(out.read_text(encoding="utf-8"))
    result.update(measured)
    result["status"] = "ok"
    return result


def worker_failure(log_path: Path, rc: int) -> dict[str, Any]:
    """A failed worker's reason (its own last ``error: `` line, if it wrote one) and the tail of its log."""
    lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    said = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    return {"error": f"worker exited with {rc}" + (f": {said[-1]}" if said else ""), "log_tail": lines[-15:]}


def settle_inputs(opts, log: Callable[[str], None]):
    """What a benchmark's options name, checked before any worker starts: (the adapter's LoRA rank, the records
    used, the base model's path, the prompt). ``opts``: BenchOptions or bench.sweep.SweepOptions."""
    from patent_risk.evaluate.batch import resolve_prompt
    from patent_risk.runtime.adapters import check_adapter_dir
    from patent_risk.runtime.bases import settle_model
    from patent_risk.runtime.embedded import resolve_model
    from patent_risk.runtime.engine_args import adapters_lora_rank
    from patent_risk.schemas.records import load_dataset

    if not Path(opts.adapter_path).is_dir():
        raise UserError(f"{opts.adapter_path}: no such adapter folder")
    rank = adapters_lora_rank([opts.adapter_path], opts.engine_args)
    check_adapter_dir(opts.adapter_path, rank)
    n_records = len(load_dataset(opts.data, limit=opts.limit).records)
    if n_records == 0:
        raise UserError(f"{opts.data}: no records")
    model = settle_model(opts.model, [opts.adapter_path], allow_other_base=opts.allow_other_base, log=log)
    prompt = resolve_prompt(opts.prompt_template, opts.adapter_path, opts.schema_name, log)
    return rank, n_records, resolve_model(model, log), prompt


def run_bench(opts: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every configuration of ``opts`` and write bench.json, bench.md and bench.png into ``opts.out``."""
    if (opts.limit < 1 or opts.hf_limit < 1 or opts.batch_size < 1 or (opts.hf_threads is not None and opts.hf_threads < 1)
            or (opts.compile_sample is not None and opts.compile_sample < 1)):
        raise UserError("--limit, --hf-limit, --batch-size, --hf-threads and --compile-sample must be at least 1")
    rank, n_records, model_path, prompt = settle_inputs(opts, log)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = out / "workers"
    workdir.mkdir(exist_ok=True)
    need_merged = any(CONFIGS[c].adapter_mode == "merged" for c in opts.configs)
    merged_dir = Path(tempfile.mkdtemp(prefix="bench-merged-")) / "model" if need_merged else None
    limits = {c: min(n_records, samples_for(c, opts.limit, opts.hf_limit)) for c in opts.configs}
    spec = {"data": opts.data, "limit": opts.limit, "model": model_path,
            "adapter": {"name": opts.adapter_name, "path": str(Path(opts.adapter_path).resolve())},
            "merged": str(merged_dir) if merged_dir else None, "schema": opts.schema_name,
            "requests": str((workdir / "requests.json").resolve()), "limits": limits, "batch_size": opts.batch_size,
            "max_model_len": opts.max_model_len, "gpu_memory_utilization": opts.gpu_memory_utilization,
            "hf_threads": opts.hf_threads or os.cpu_count() or 1, "seed": opts.seed, "outputs_dir": str((out / "outputs").resolve()),
            "own_ids": opts.own_ids, "warm_pass": opts.warm_pass, "workdir": str(workdir.resolve()),
            "compile_sample": opts.compile_sample, "max_lora_rank": rank, "engine_args": dict(opts.engine_args),
            "prompt": prompt.describe(opts.schema_name)}
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    runs: list[dict[str, Any]] = []
    try:
        log(f"[bench] prepare: requests for {n_records} samples" + (" + merging the adapter into the base" if need_merged else ""))
        prep = _run_worker(PREPARE, spec_path, workdir)
        if prep["status"] != "ok":
            raise UserError(f"preparing failed ({prep['error']}); log {prep['log']}:\n  " + "\n  ".join(prep["log_tail"]))
        log(f"[bench] prepare: done in {prep['worker_wall_s']} s" + (f" (merge {prep['merge_s']} s)" if need_merged else ""))
        requests = json.loads((workdir / "requests.json").read_text(encoding="utf-8"))
        for i, name in enumerate(opts.configs, 1):
            log(f"[bench] {i}/{len(opts.configs)} {name}: {limits[name]} samples: {CONFIGS[name].description}")
            raw = _run_worker(name, spec_path, workdir)
            run = summarize_run(raw, requests, opts.schema_name)
            runs.append(run)
            log("[bench]   " + progress_line(run))
    finally:
        if merged_dir is not None:
            shutil.rmtree(merged_dir.parent, ignore_errors=True)
    doc = {
        "created_at": started, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": opts.data, "base_model": model_path, "adapter": spec["adapter"], "schema": opts.schema_name,
        "limit": opts.limit, "hf_limit": opts.hf_limit, "batch_size": opts.batch_size, "max_model_len": opts.max_model_len,
        "gpu_memory_utilization": opts.gpu_memory_utilization, "hf_threads": spec["hf_threads"],
        "own_ids": opts.own_ids, "warm_pass": opts.warm_pass, "compile_sample": opts.compile_sample,
        "max_lora_rank": rank, "engine_args": dict(opts.engine_args), "prompt": spec["prompt"],
        "configs": list(opts.configs),
        "config_descriptions": {c: asdict(CONFIGS[c]) for c in opts.configs},
        "merge": {"merge_s": prep.get("merge_s"), "path": "temporary folder, removed after the run"} if need_merged else None,
        "machine": {"cpu_count": os.cpu_count(), "lora_ops_env": {k: os.environ.get(k) for k in
                                                                   ("PATENT_RISK_STOCK_LORA_OPS", "PATENT_RISK_LORA_OPS_MODE")}},
        "compile_what": COMPILE_WHAT,
        "notes": NOTES,
        "runs": runs,
        "ratios": ratios(runs),
        "identical_outputs": identical_outputs(runs, out / "outputs"),
    }
    write_bench(doc, out)
    return doc


NOTES = [
    "Every configuration ran in its own worker process, one after another, on the same first samples of the dataset, "
    "with the same prompts and the same per-record max_tokens (runtime.requests.build_requests, computed once).",
    "hf-outlines decodes one record at a time and runs only the first --hf-limit samples; samples/s and output tok/s "
    "are per sample and per token, so its ratios stay comparable, but they come from fewer (and the first) samples.",
    "gen_s is the wall time of generation only; load_s is model (and adapter) load plus a 2-token warm-up generation "
    "(for hf-outlines also one 2-token constrained generation, which compiles llguidance's torch.compile'd mask "
    "kernel); compile_s is measured separately (see compile_what) and is not in gen_s.",
    "peak_pss_mb: the peak PSS (proportional set size) of the worker's process tree (vLLM's engine core is a "
    "child), sampled every 0.2 s over the worker's life (psutil); peak_pss_gen_mb the same while generating. A page "
    "shared by the tree's processes (weights, libraries) counts once, split among them. vLLM's memory includes the KV cache it reserves (engine_info.kv_cache_memory_bytes: sized for "
    "all samples at full length on the CPU build unless --gpu-memory-utilization is given).",
    "vLLM configurations generate twice on one engine. The cold pass (gen_s, samples_s, output_tok_s) starts with "
    "no grammar compiled and outlines' disk cache an empty folder of the worker's own, so the engine core compiles "
    "every distinct schema while the batch runs (vLLM compiles asynchronously: requests whose grammar is ready "
    "decode meanwhile); the warm pass (*_warm) repeats the same requests with every grammar cached (outlines: its "
    "disk cache; xgrammar: its compiler cache) and vLLM's prefix cache emptied first. With --own-ids every record "
    "has element ids of its own, hence a schema of its own: what a user whose ids differ per claim pays cold. "
    "With outlines the offline engine first compiles the batch's new schemas on every core of its front-end process "
    "into the disk cache (runtime/outlines_cache.precompile; inside gen_s, engine_info.outlines_precompiled), so the "
    "engine core finds them instead of compiling them on its one grammar thread.",
    "ttft_s_median / ttft_s_p90: each request's time from being queued to its first token (vLLM's per-request "
    "stats), over the samples of the pass; with the whole set submitted at once it includes waiting for a batch "
    "slot and, constrained, for the request's grammar.",
    "json_valid: share of outputs that parse as JSON and pass the generic output schema (schemas.output.schema_errors), "
    "for constrained and unconstrained runs alike.",
    "others_cpu_per_wall: CPU seconds other processes used per wall second while generating (0 on a quiet machine); "
    "figures taken with it well above 0 were contended.",
]


# --------------------------------------------------------------------------
# Pure summaries
# --------------------------------------------------------------------------


