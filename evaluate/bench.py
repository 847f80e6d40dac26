"""`evaluate bench`: one invocation, the same samples, base model, adapter and max_tokens, through
every way this project can generate, each configuration in its own worker process, one after another.

Configurations (``CONFIGS``):

- ``hf``: HF transformers ``generate`` + the PEFT adapter, batched (left padding), unconstrained;
- ``hf-outlines``: HF + PEFT + the outlines library's JSON-schema logits processor (llguidance
  backend), one record at a time (each record has its own schema);
- ``vllm``: vLLM offline, the adapter as a LoRA module, unconstrained;
- ``vllm-outlines`` / ``vllm-xgrammar`` / ``vllm-guidance``: the same, constrained, with that
  structured-outputs backend;
- ``merged`` / ``merged-outlines``: the adapter merged into the base (``train merge``, once, into a
  temporary folder), served by vLLM without LoRA, unconstrained / constrained (outlines).

Every configuration runs as ``python -m evaluate.bench_worker --config NAME --spec spec.json --out
result.json``; the parent samples the summed RSS of the worker's process tree (vLLM's engine core is a
child process) from /proc every 0.2 s. The parent never imports torch or vLLM.

Pure helpers (``summarize_run``, ``ratios``, ``identical_outputs``, ``to_markdown``) take plain dicts.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from schemas.errors import UserError

SAMPLE_INTERVAL_S = 0.2
PREPARE = "prepare"


@dataclass(frozen=True)
class BenchConfig:
    """One configuration: which engine, how the adapter is applied, which constraint."""

    name: str
    engine: str  # "hf" | "vllm"
    adapter_mode: str  # "peft" | "lora" | "merged"
    constrained: bool
    backend: str | None  # structured-outputs backend (None: unconstrained)
    description: str
    eager: bool = False  # vLLM without torch.compile, as vLLM's CPU build runs every LoRA engine


CONFIGS: dict[str, BenchConfig] = {c.name: c for c in (
    BenchConfig("hf", "hf", "peft", False, None,
                "HF transformers generate + PEFT adapter, batched (left padding), greedy, unconstrained"),
    BenchConfig("hf-outlines", "hf", "peft", True, "llguidance",
                "HF transformers + PEFT + outlines JSON-schema logits processor (llguidance backend), one record at a time"),
    BenchConfig("vllm", "vllm", "lora", False, None, "vLLM offline, adapter as a LoRA module, unconstrained"),
    BenchConfig("vllm-outlines", "vllm", "lora", True, "outlines",
                "vLLM offline, adapter as LoRA, structured outputs with the outlines (outlines-core) backend"),
    BenchConfig("vllm-xgrammar", "vllm", "lora", True, "xgrammar",
                "vLLM offline, adapter as LoRA, structured outputs with the xgrammar backend"),
    BenchConfig("vllm-guidance", "vllm", "lora", True, "guidance",
                "vLLM offline, adapter as LoRA, structured outputs with the guidance (llguidance) backend"),
    BenchConfig("merged", "vllm", "merged", False, None, "vLLM offline, adapter merged into the base (no LoRA), unconstrained"),
    BenchConfig("merged-outlines", "vllm", "merged", True, "outlines",
                "vLLM offline, adapter merged into the base (no LoRA), structured outputs with the outlines backend"),
    BenchConfig("merged-eager", "vllm", "merged", False, None,
                "vLLM offline, adapter merged, unconstrained, torch.compile off (vLLM's CPU build turns it off for "
                "LoRA engines): separates the compile gain from the LoRA cost", eager=True),
)}
DEFAULT_CONFIGS = tuple(CONFIGS)

# What `compile_s` means, per kind of run (written into the output).
COMPILE_WHAT = {
    "hf": ("summed time to build the per-record outlines logits processors "
           "(outlines LLGuidanceBackend.get_json_schema_logits_processor); llguidance builds each matcher lazily at "
           "the first generated token, so matcher construction is inside gen_s; compile_setup_s is the one-time "
           "LLGuidanceBackend(model) (llguidance tokenizer from the HF tokenizer); engine_info."
           "llguidance_matcher_compile_s is llguidance's own compile of the distinct grammars (LLMatcher), timed "
           "apart for comparison with vllm-guidance"),
    "vllm": ("time to compile the sample's distinct schemas with the backend's own library, through vLLM's own "
             "backend class and the engine's config (outlines: outlines_core.Index via OutlinesBackend; xgrammar: "
             "GrammarCompiler.compile_json_schema via XgrammarBackend; guidance: llguidance.LLMatcher via "
             "GuidanceBackend), in the worker's front-end process before generation; the engine core compiles again "
             "during generation (that time is inside gen_s); compile_setup_s is the backend's construction "
             "(vocabulary / tokenizer info). compile_s_per_schema: the mean of those compiles (cold: nothing cached); "
             "compile_s_per_schema_warm: what a request whose schema was compiled before pays (outlines: a lookup in "
             "the index cache the engine itself filled during the cold pass, as vLLM's settings choose it; xgrammar: "
             "its compiler cache; guidance: it keeps no cache, so it compiles again)"),
}


@dataclass
class BenchOptions:
    data: str
    adapter_name: str
    adapter_path: str
    model: str | None = None
    configs: tuple[str, ...] = DEFAULT_CONFIGS
    limit: int = 32
    hf_limit: int = 8
    batch_size: int = 16
    out: str = "artifacts/bench/latest"
    schema_name: str = "v1"
    max_model_len: int = 2048
    gpu_memory_utilization: float | None = None
    hf_threads: int | None = None
    seed: int = 0
    own_ids: bool = False  # every record its own element ids, hence its own schema (records.with_own_element_ids)
    warm_pass: bool = True  # vLLM configurations generate a second time on the same engine, caches warm
    compile_sample: int | None = None  # measure the front-end compile on the first N distinct schemas only


def parse_configs(text: str | None) -> tuple[str, ...]:
    if not text:
        return DEFAULT_CONFIGS
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise UserError(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if len(set(names)) != len(names):
        raise UserError(f"--configs names a configuration twice: {text}")
    if not names:
        raise UserError("--configs is empty")
    return tuple(names)


def samples_for(config: str, limit: int, hf_limit: int) -> int:
    """hf-outlines decodes one record at a time and is slow: it gets the first ``hf_limit`` samples."""
    return min(limit, hf_limit) if config == "hf-outlines" else limit


# --------------------------------------------------------------------------
# /proc: process trees, RSS and CPU time (Linux)
# --------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()  # fields from 3 (state) on


def tree_pids(root: int) -> list[int]:
    """``root`` and every live descendant (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        f = stat_fields(int(d.name))
        if f is None or f[0] == "Z":
            continue
        children.setdefault(int(f[1]), []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def rss_bytes(pids: list[int]) -> int:
    """Summed resident set size (shared pages count once per process, as RSS does)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the given processes have used."""
    total = 0
    for pid in pids:
        f = stat_fields(pid)
        if f is not None:
            total += int(f[11]) + int(f[12])  # utime, stime
    return total / _TICK


def machine_busy_seconds() -> float | None:
    """CPU seconds every process on the machine has used (/proc/stat), else None."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / _TICK


class CpuWindow:
    """Contention indicator over a timed window: CPU other processes used per wall second (0 on a
    quiet machine; up to the core count when every core was taken by others)."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._busy0 = machine_busy_seconds()
        self._own0 = cpu_seconds(tree_pids(self._pid))
        self._load0 = os.getloadavg()[0]
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._t0
        own = cpu_seconds(tree_pids(self._pid)) - self._own0
        busy1 = machine_busy_seconds()
        out: dict[str, Any] = {"own_cpu_per_wall": round(own / wall, 3) if wall else None,
                               "loadavg_1m": [round(self._load0, 2), round(os.getloadavg()[0], 2)]}
        if self._busy0 is not None and busy1 is not None and wall:
            out["others_cpu_per_wall"] = round(max(0.0, (busy1 - self._busy0 - own) / wall), 3)
        return out


class TreeMemorySampler:
    """Samples the summed RSS of a process tree every ``interval`` s in a thread; keeps the peak, and the
    peak while the worker's phase file says ``gen``."""

    def __init__(self, pid: int, phase_path: Path | None = None, interval: float = SAMPLE_INTERVAL_S):
        self.pid, self.phase_path, self.interval = pid, phase_path, interval
        self.peak = 0
        self.peak_gen = 0
        self.samples = 0
        self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _phase(self) -> str:
        if self.phase_path is None:
            return ""
        try:
            return self.phase_path.read_text().strip()
        except OSError:
            return ""

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = tree_pids(self.pid)
            rss = rss_bytes(pids)
            self.samples += 1
            self.max_processes = max(self.max_processes, len(pids))
            self.peak = max(self.peak, rss)
            if self._phase() == "gen":
                self.peak_gen = max(self.peak_gen, rss)
            self._stop.wait(self.interval)


def phase_file(result_path: Path) -> Path:
    """Where a worker says which phase it is in (``gen`` while generating)."""
    return result_path.with_name(result_path.name + ".phase")


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
    cmd = [sys.executable, "-m", "evaluate.bench_worker", "--config", config, "--spec", str(spec_path), "--out", str(out)]
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
        with TreeMemorySampler(proc.pid, phase) as mem:
            rc = proc.wait()
    wall = time.perf_counter() - t0
    measured = {"worker_wall_s": round(wall, 2), "returncode": rc, "log": str(log_path),
                "peak_rss_mb": round(mem.peak / 2**20, 1), "peak_rss_gen_mb": round(mem.peak_gen / 2**20, 1) or None,
                "memory_samples": mem.samples, "max_processes": mem.max_processes}
    if rc != 0 or not out.exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        return {"config": config, "status": "failed", "error": f"worker exited with {rc}", "log_tail": tail, **measured}
    result = json.loads(out.read_text(encoding="utf-8"))
    result.update(measured)
    result["status"] = "ok"
    return result


def run_bench(opts: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every configuration of ``opts`` and write bench.json, bench.md and bench.png into ``opts.out``."""
    from schemas.embedded import resolve_model
    from schemas.records import load_dataset

    if (opts.limit < 1 or opts.hf_limit < 1 or opts.batch_size < 1 or (opts.hf_threads is not None and opts.hf_threads < 1)
            or (opts.compile_sample is not None and opts.compile_sample < 1)):
        raise UserError("--limit, --hf-limit, --batch-size, --hf-threads and --compile-sample must be at least 1")
    if not Path(opts.adapter_path).is_dir():
        raise UserError(f"{opts.adapter_path}: no such adapter folder")
    from train.export import check_adapter_dir

    check_adapter_dir(opts.adapter_path)
    n_records = len(load_dataset(opts.data, limit=opts.limit).records)
    if n_records == 0:
        raise UserError(f"{opts.data}: no records")
    model_path = resolve_model(opts.model, log)
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
            "compile_sample": opts.compile_sample}
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
    "with the same prompts and the same per-record max_tokens (evaluate.requests.build_requests, computed once).",
    "hf-outlines decodes one record at a time and runs only the first --hf-limit samples; samples/s and output tok/s "
    "are per sample and per token, so its ratios stay comparable, but they come from fewer (and the first) samples.",
    "gen_s is the wall time of generation only; load_s is model (and adapter) load plus a 2-token warm-up generation "
    "(for hf-outlines also one 2-token constrained generation, which compiles llguidance's torch.compile'd mask "
    "kernel); compile_s is measured separately (see compile_what) and is not in gen_s.",
    "peak_rss_mb: the peak of the summed RSS of the worker's process tree (vLLM's engine core is a child), sampled "
    "from /proc every 0.2 s over the worker's life; peak_rss_gen_mb the same while generating. Shared pages count "
    "once per process. vLLM's RSS includes the KV cache it reserves (engine_info.kv_cache_memory_bytes: sized for "
    "all samples at full length on the CPU build unless --gpu-memory-utilization is given).",
    "vLLM configurations generate twice on one engine. The cold pass (gen_s, samples_s, output_tok_s) starts with "
    "no grammar compiled and outlines' disk cache an empty folder of the worker's own, so the engine core compiles "
    "every distinct schema while the batch runs (vLLM compiles asynchronously: requests whose grammar is ready "
    "decode meanwhile); the warm pass (*_warm) repeats the same requests with every grammar cached (outlines: its "
    "disk cache; xgrammar: its compiler cache) and vLLM's prefix cache emptied first. With --own-ids every record "
    "has element ids of its own, hence a schema of its own: what a user whose ids differ per claim pays cold. "
    "With outlines the offline engine first compiles the batch's new schemas on every core of its front-end process "
    "into the disk cache (serve/outlines_cache.precompile; inside gen_s, engine_info.outlines_precompiled), so the "
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


def summarize_run(raw: dict[str, Any], requests: list[dict[str, Any]] | None = None, schema_name: str = "v1") -> dict[str, Any]:
    """A worker's result as one row of the benchmark: throughput, validity, finish reasons, hash."""
    from .scoring import OutputParser

    name = raw["config"]
    cfg = CONFIGS[name]
    base = {"config": name, "engine": cfg.engine, "adapter_mode": cfg.adapter_mode, "constrained": cfg.constrained,
            "backend": cfg.backend, "status": raw.get("status", "ok")}
    keep = ("worker_wall_s", "returncode", "log", "peak_rss_mb", "peak_rss_gen_mb", "memory_samples", "max_processes")
    if base["status"] != "ok":
        return {**base, "error": raw.get("error"), "log_tail": raw.get("log_tail"), **{k: raw.get(k) for k in keep}}
    outputs = raw["outputs"]
    parse = OutputParser()
    valid = sum(parse(o["raw_output"], schema_name).status == "valid" for o in outputs)
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
                   ("hf-outlines", "vllm-outlines"), ("vllm-outlines", "vllm-xgrammar"), ("vllm-outlines", "vllm-guidance"))


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
            f"json_valid {run['json_valid']}, finish {run['finish_reasons']}, peak RSS {run['peak_rss_mb']:.0f} MB")


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
             "| config | engine | adapter | constraint | samples | distinct schemas | output tokens | load s | gen s cold | "
             "samples/s cold | gen s warm | samples/s warm | output tok/s cold (warm) | compile s per schema cold (warm) | "
             "TTFT median s cold (warm) | peak RSS MB (gen) | json_valid | finish reasons | outputs hash | others' CPU/wall |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in doc["runs"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['config']} | {r['engine']} | {r['adapter_mode']} | {r['backend'] or 'none'} | FAILED: "
                         f"{r.get('error')} |" + " |" * 15)
            continue
        comp = ("—" if r.get("compile_s") is None else
                f"{_fmt(r.get('compile_s_per_schema'))} ({_fmt(r.get('compile_s_per_schema_warm'))}); "
                f"+{_fmt(r.get('compile_setup_s'))} setup")
        finish = ", ".join(f"{k} {v}" for k, v in r["finish_reasons"].items())
        others = (r.get("contention") or {}).get("others_cpu_per_wall")
        warm_note = "" if r.get("warm_same_outputs") in (None, True) else " (other outputs!)"
        lines.append(f"| {r['config']} | {r['engine']} | {r['adapter_mode']} | {r['backend'] or 'none'} | {r['samples']} | "
                     f"{_fmt(r.get('distinct_schemas'))} | {r['output_tokens']} | {_fmt(r['load_s'])} | {_fmt(r['gen_s'])} | "
                     f"{_fmt(r['samples_s'])} | {_fmt(r.get('gen_s_warm'))} | {_fmt(r.get('samples_s_warm'))}{warm_note} | "
                     f"{_fmt(r['output_tok_s'])} ({_fmt(r.get('output_tok_s_warm'))}) | {comp} | "
                     f"{_fmt(r.get('ttft_s_median'))} ({_fmt(r.get('ttft_s_median_warm'))}) | "
                     f"{_fmt(r['peak_rss_mb'])} ({_fmt(r.get('peak_rss_gen_mb'))}) | "
                     f"{_fmt(r['json_valid'])} | {finish} | `{r['outputs_sha256']}` | {_fmt(others)} |")
    if doc.get("ratios"):
        lines += ["", "| ratio | numerator / denominator | metric | value |", "|---|---|---|---:|"]
        for q in doc["ratios"]:
            lines.append(f"| {q['ratio']} | {q['numerator']} / {q['denominator']} | {q['metric']} | {_fmt(q['value'])} |")
    if doc.get("identical_outputs"):
        lines += ["", "| identical raw outputs | compared | identical | share |", "|---|---:|---:|---:|"]
        for q in doc["identical_outputs"]:
            lines.append(f"| {q['a']} vs {q['b']} | {q['compared']} | {q['identical']} | {_fmt(q['share'])} |")
    if doc.get("merge"):
        lines += ["", f"Merged model: made once by `train merge` in {_fmt(doc['merge'].get('merge_s'))} s "
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
                           (axes[2], "peak_rss_mb", "peak RSS of the worker tree (MB)")):
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
