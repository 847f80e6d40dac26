"""`evaluate constraint-cost`: what the JSON-schema constraint costs in throughput, per structured-outputs backend
and batch size, both arms measured alike (issue 34).

Each point (backend x batch size) runs in a worker process of its own (bench.sweep_worker): one engine with
``max_num_seqs`` = the batch size, every grammar compiled before timing, then the records unconstrained and
constrained ``repeats`` times, alternating, vLLM's prefix cache emptied before every pass. The parent never
imports torch or vLLM. After every point it rewrites sweep.json / sweep.md / sweep.png, so that a long sweep
shows what it has; an interrupted sweep started again with the same settings keeps the points it finished
(points/<backend>-b<batch>.json) unless ``fresh``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from patent_risk.schemas.errors import UserError

from .offline import _run_worker, settle_inputs, worker_failure
from .offline_configs import PREPARE
from .offline_summary import count_valid
from .sweep_summary import ARMS, point_key, progress_line, summarize_point, write_sweep

BACKENDS = ("outlines", "xgrammar", "guidance")


@dataclass
class SweepOptions:
    data: str
    adapter_name: str
    adapter_path: str
    model: str | None = None
    backends: tuple[str, ...] = BACKENDS
    batch_sizes: tuple[int, ...] = (1, 8, 32, 147)
    repeats: int = 3
    limit: int = 147
    limit_at: dict[int, int] = field(default_factory=lambda: {1: 32})  # fewer records at a batch size
    schema_name: str = "v1"
    max_model_len: int = 1024
    gpu_memory_utilization: float | None = None
    seed: int = 0
    label_probs: bool = False
    engine_args: dict = field(default_factory=dict)
    allow_other_base: bool = False
    prompt_template: str | None = None
    out: str = "artifacts/bench/constraint-cost"
    fresh: bool = False  # discard the points an earlier invocation finished
    profile_rate: int | None = None  # py-spy samples per second in one extra, untimed pass per arm (None: no profile)


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{what}: a comma-separated list of whole numbers, got {text!r}") from None
    if not values or any(v < 1 for v in values) or len(set(values)) != len(values):
        raise UserError(f"{what}: distinct whole numbers of at least 1, got {text!r}")
    return values


def parse_backends(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names or len(set(names)) != len(names):
        raise UserError(f"--backends: distinct names among {', '.join(BACKENDS)}, got {text!r}")
    return names


def parse_limit_at(pairs: tuple[str, ...], what: str = "--limit-at", form: str = "BATCH=RECORDS") -> dict[int, int]:
    out: dict[int, int] = {}
    for pair in pairs:
        batch, sep, n = pair.partition("=")
        try:
            b, k = int(batch), int(n)
        except ValueError:
            b = k = 0
        if not sep or b < 1 or k < 1:
            raise UserError(f"{what}: {form} with whole numbers of at least 1, got {pair!r}")
        out[b] = k
    return out


def _identity(spec: dict[str, Any]) -> str:
    """What a kept point must share with this invocation to be reused (not the output paths)."""
    keep = {k: spec[k] for k in ("data", "model", "adapter", "schema", "max_model_len", "gpu_memory_utilization",
                                 "seed", "label_probs", "engine_args", "prompt", "repeats", "limit", "limit_at",
                                 "profile_rate")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _run_point(spec_path: Path, backend: str, batch: int, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The point's worker; its ``[pass]`` lines are echoed as they come."""
    key = point_key(backend, batch)
    out = workdir / f"{key}.result.json"
    log_path = workdir / f"{key}.log"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "patent_risk.bench.sweep_worker", "--spec", str(spec_path), "--backend", backend,
           "--batch", str(batch), "--out", str(out)]
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as fh, open(log_path, encoding="utf-8", errors="replace") as reader:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
        pending = ""
        while True:
            rc = proc.poll()
            pending += reader.read()
            *lines, pending = pending.split("\n")
            for line in lines:
                if line.startswith("[pass]"):
                    log(f"[constraint-cost]   {line}")
            if rc is not None:
                break
            time.sleep(0.5)
    wall = round(time.perf_counter() - t0, 2)
    if rc != 0 or not out.exists():
        return {"backend": backend, "batch": batch, "status": "failed", "worker_wall_s": wall, "log": str(log_path),
                **worker_failure(log_path, rc)}
    result = json.loads(out.read_text(encoding="utf-8"))
    result.update(worker_wall_s=wall, log=str(log_path))
    return result


def _valid_counts(outputs_dir: Path, key: str, schema_name: str) -> dict[str, int | None]:
    counts: dict[str, int | None] = {}
    for arm in ARMS:
        path = outputs_dir / f"{key}-{arm}.jsonl"
        rows = ([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
                if path.exists() else None)
        counts[arm] = None if rows is None else count_valid(rows, schema_name)
    return counts


def _profile_summary(profiles: dict[str, Any] | None, rate: int | None) -> dict[str, Any] | None:
    if not profiles or not rate:
        return None
    from .stacks import compare

    texts = {arm: Path(p["path"]).read_text(encoding="utf-8", errors="replace") for arm, p in profiles.items()}
    return {**compare(texts["unconstrained"], texts["constrained"], rate),
            "passes": profiles}


NOTES = [
    "Each point ran in a worker process of its own, one after another, never two at once: one vLLM engine with "
    "max_num_seqs set to the batch size (its KV cache sized for that many full-length sequences), the adapter as a "
    "LoRA module, the backend as vLLM's structured-outputs backend; every request of a pass is submitted at once and "
    "vLLM's scheduler decodes at most max_num_seqs together.",
    "Before timing, every distinct schema of the records was compiled once (a 2-token constrained request each): "
    "the grammar cache is warm, as a user's second run finds it (outlines: its disk cache; xgrammar: its compiler "
    "cache; guidance keeps none and compiles per request, which is its real cost).",
    "Then one pass of the unconstrained arm outside the figures (first_pass): a fresh engine's first full pass may "
    "pay one-time costs (memory touched for the first time, kernels chosen for new batch shapes), which would fall "
    "on whichever arm went first.",
    "The arms alternate which runs first in each repeat, and vLLM's prefix cache is emptied before every pass "
    "(prefix_cache: reset), so neither arm prefills for free what the other left.",
    "samples/s is over the pass's generation time less the outlines compile-ahead inside it (precompile_s: cache "
    "lookups here). A ratio improves as much by slowing the unconstrained arm as by speeding the constrained one: "
    "read it beside both arms' absolute samples/s.",
    "Greedy decoding: each arm writes the same text every repeat (same_outputs); the constrained and unconstrained "
    "arms may write different numbers of output tokens (output tokens unc / con), which moves samples/s but not "
    "output tok/s.",
    "others_cpu_per_wall: CPU seconds other processes used per wall second during a pass; a point where it exceeded "
    "0.2 is marked contended and its figures are not comparable.",
]


def run_sweep(opts: SweepOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    from patent_risk.runtime import machine

    if opts.repeats < 1 or opts.limit < 1:
        raise UserError("--repeats and --limit must be at least 1")
    if "max_num_seqs" in opts.engine_args:
        raise UserError("--engine-arg max_num_seqs: the sweep sets it at each point (--batch-sizes)")
    if opts.profile_rate is not None:
        from .stacks import py_spy

        if opts.profile_rate < 1:
            raise UserError("--profile-rate must be at least 1 sample per second")
        if py_spy() is None:
            raise UserError("--profile needs py-spy, which is not installed here (pip install py-spy)")
    rank, n_records, model_path, prompt = settle_inputs(opts, log)
    out = Path(opts.out)
    workdir = out / "workers"
    points_dir = out / "points"
    if opts.fresh:
        for d in (workdir, points_dir, out / "outputs", out / "profiles"):
            shutil.rmtree(d, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    points_dir.mkdir(exist_ok=True)
    limit_at = {str(b): min(n, n_records) for b, n in opts.limit_at.items() if b in opts.batch_sizes}
    spec = {"data": opts.data, "limit": n_records, "limit_at": limit_at, "model": model_path, "own_ids": False,
            "adapter": {"name": opts.adapter_name, "path": str(Path(opts.adapter_path).resolve())}, "merged": None,
            "schema": opts.schema_name, "requests": str((workdir / "requests.json").resolve()),
            "max_model_len": opts.max_model_len, "gpu_memory_utilization": opts.gpu_memory_utilization,
            "seed": opts.seed, "label_probs": opts.label_probs, "engine_args": dict(opts.engine_args),
            "max_lora_rank": rank, "repeats": opts.repeats, "outputs_dir": str((out / "outputs").resolve()),
            "workdir": str(workdir.resolve()), "prompt": prompt.describe(opts.schema_name),
            "profile_rate": opts.profile_rate, "profiles_dir": str((out / "profiles").resolve())}
    identity = _identity(spec)
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    doc: dict[str, Any] = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "finished_at": None,
        "identity": identity, "machine": machine.describe(), "data": opts.data, "base_model": model_path,
        "adapter": spec["adapter"], "schema": opts.schema_name, "limit": n_records, "limit_at": limit_at,
        "backends": list(opts.backends), "batch_sizes": list(opts.batch_sizes), "repeats": opts.repeats,
        "max_model_len": opts.max_model_len, "label_probs": opts.label_probs, "engine_args": dict(opts.engine_args),
        "prompt": spec["prompt"], "notes": NOTES, "points": []}
    log(f"[constraint-cost] prepare: requests for {n_records} records")
    prep = _run_worker(PREPARE, spec_path, workdir)
    if prep["status"] != "ok":
        raise UserError(f"preparing failed ({prep['error']}); log {prep['log']}:\n  " + "\n  ".join(prep["log_tail"]))
    grid = [(b, n) for b in opts.backends for n in opts.batch_sizes]
    for i, (backend, batch) in enumerate(grid, 1):
        key = point_key(backend, batch)
        kept_path = points_dir / f"{key}.json"
        kept = json.loads(kept_path.read_text(encoding="utf-8")) if kept_path.exists() else None
        records = int(limit_at.get(str(batch), n_records))
        if kept and kept.get("identity") == identity and kept.get("status") == "ok":
            log(f"[constraint-cost] {i}/{len(grid)} {key}: kept from {kept.get('started_at')} ({kept_path})")
            point = kept
        else:
            log(f"[constraint-cost] {i}/{len(grid)} {backend} at batch {batch}: {records} records, "
                f"{opts.repeats} repeats per arm")
            raw = _run_point(spec_path, backend, batch, workdir, log)
            point = summarize_point(raw, _valid_counts(out / "outputs", key, opts.schema_name) if raw.get("status") == "ok" else None)
            point.update(identity=identity, passes=raw.get("passes"), worker_wall_s=raw.get("worker_wall_s"),
                         log=raw.get("log"), profile=_profile_summary(raw.get("profiles"), opts.profile_rate))
            if point["status"] == "ok":
                kept_path.write_text(json.dumps(point, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        log(f"[constraint-cost]   {progress_line(point)}")
        doc["points"].append(point)
        write_sweep(doc, out)
    doc["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_sweep(doc, out)
    return doc
