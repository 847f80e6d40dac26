"""One point of `evaluate constraint-cost` (a structured-outputs backend at one batch size), in its own process
(started by bench.sweep, one at a time):

    python -m patent_risk.bench.sweep_worker --spec spec.json --backend outlines --batch 8 --out result.json

One engine with ``max_num_seqs`` = the batch size (its KV cache sized for that many full-length sequences) and
that backend. It warms up (a 2-token generation), compiles every distinct schema of the records once (a
2-token constrained request per schema: the grammar cache warm, as a user's second run finds it), runs the
records once unconstrained outside the figures (a fresh engine's first full pass may pay one-time costs), then runs
the records unconstrained and constrained, ``repeats`` times each, the arms alternating which goes first,
vLLM's prefix cache emptied before every pass. Every request of a pass is submitted at once; vLLM decodes
at most ``max_num_seqs`` of them together. Each pass prints one ``[pass]`` line (the parent echoes it).
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from patent_risk.runtime.artifacts import atomic_write_text
from patent_risk.runtime.engine_death import EngineDied
from patent_risk.runtime.procs import CpuWindow

from .offline_summary import outputs_hash
from .sweep_summary import pass_order, point_key
from .worker import WARMUP_TOKENS


def run_point(spec: dict[str, Any], backend: str, batch: int, out: Path) -> dict[str, Any]:
    from patent_risk.runtime import machine
    from patent_risk.runtime.engines import AdapterSpec, VllmOffline
    from patent_risk.runtime.requests import GenRequest

    limit = int(spec["limit_at"].get(str(batch), spec["limit"]))
    rows = json.loads(Path(spec["requests"]).read_text(encoding="utf-8"))[:limit]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    engine = VllmOffline(spec["model"], AdapterSpec(spec["adapter"]["name"], spec["adapter"]["path"]), backend=backend,
                         max_model_len=spec["max_model_len"], gpu_memory_utilization=spec.get("gpu_memory_utilization"),
                         seed=spec.get("seed", 0), max_batch=batch, max_lora_rank=spec.get("max_lora_rank", 16),
                         engine_args={**spec.get("engine_args", {}), "max_num_seqs": batch})
    try:
        first = rows[0]
        engine.generate([GenRequest(first["record_id"], first["messages"], WARMUP_TOKENS, None)])
        load_s = time.perf_counter() - t0
        # every distinct schema compiled once, so that every pass below finds its grammar cached
        by_schema: dict[str, dict[str, Any]] = {}  # a record per distinct schema, keyed as vLLM keys it (worker._distinct)
        for r in rows:
            by_schema.setdefault(json.dumps(r["json_schema"]), r)
        ts = time.perf_counter()
        engine.generate([GenRequest(f"warm-{i}", r["messages"], WARMUP_TOKENS, r["json_schema"])
                         for i, r in enumerate(by_schema.values())])
        grammar_s = time.perf_counter() - ts
        label_probs = bool(spec.get("label_probs"))
        reqs = {arm: [GenRequest(r["record_id"], r["messages"], r["max_tokens"],
                                 r["json_schema"] if arm == "constrained" else None, label_probs=label_probs) for r in rows]
                for arm in ("unconstrained", "constrained")}
        # One pass outside the figures first: a fresh engine's first full pass may pay one-time costs (memory touched
        # for the first time, kernels chosen for new batch shapes) that would fall on whichever arm went first. Its
        # time is kept (first_pass) to show whether it did.
        engine.reset_prefix_cache()
        ts = time.perf_counter()
        first_results = engine.generate(reqs["unconstrained"])
        first_pass = {"arm": "unconstrained", "gen_s": round(time.perf_counter() - ts, 3), "samples": len(first_results),
                      "output_tokens": sum(g.output_tokens for g in first_results)}
        print(f"[pass] first (not in the figures) unconstrained: {first_pass['samples']} samples in {first_pass['gen_s']} s",
              flush=True)
        passes: list[dict[str, Any]] = []
        outputs_dir = Path(spec["outputs_dir"])
        outputs_dir.mkdir(parents=True, exist_ok=True)
        for i, (repeat, arm) in enumerate(pass_order(spec["repeats"])):
            state = engine.reset_prefix_cache()
            before = dict(engine.precompiled)
            window = CpuWindow()
            ts = time.perf_counter()
            results = engine.generate(reqs[arm])
            gen_s = time.perf_counter() - ts
            contention = window.stop()
            pre = round(engine.precompiled.get("seconds", 0.0) - before.get("seconds", 0.0), 3)
            outputs = [{"record_id": g.record_id, "raw_output": g.raw_output, "finish_reason": g.finish_reason,
                        "prompt_tokens": g.prompt_tokens, "output_tokens": g.output_tokens,
                        "cached_prompt_tokens": g.cached_tokens, "ttft_s": g.ttft_s} for g in results]
            if repeat == 0:  # the text is the same every repeat (greedy; outputs_sha256 says whether it was)
                with open(outputs_dir / f"{point_key(backend, batch)}-{arm}.jsonl", "w", encoding="utf-8") as f:
                    for o in outputs:
                        f.write(json.dumps(o, ensure_ascii=False) + "\n")
            p = {"order": i, "repeat": repeat, "arm": arm, "prefix_cache": state, "gen_s": round(gen_s, 3),
                 "precompile_s": pre, "samples": len(results),
                 "prompt_tokens": sum(g.prompt_tokens for g in results),
                 "cached_prompt_tokens": sum(g.cached_tokens or 0 for g in results),
                 "output_tokens": sum(g.output_tokens for g in results),
                 "finish_reasons": dict(sorted(Counter(g.finish_reason for g in results).items())),
                 "outputs_sha256": outputs_hash(outputs), "contention": contention}
            passes.append(p)
            print(f"[pass] {i + 1}/{2 * spec['repeats']} {arm} (repeat {repeat + 1}): {p['samples']} samples in "
                  f"{p['gen_s']} s = {round(p['samples'] / max(1e-9, gen_s - pre), 3)} samples/s, "
                  f"{p['output_tokens']} output tokens, others' CPU {contention.get('others_cpu_per_wall')}/s", flush=True)
        profiles = _profile(engine, reqs, spec, point_key(backend, batch)) if spec.get("profile_rate") else None
        info = dict(engine.description)
        info["max_num_seqs"] = engine.max_num_seqs
    finally:
        engine.close()
    return {"backend": backend, "batch": batch, "records": len(rows), "repeats": spec["repeats"], "status": "ok",
            "started_at": started, "load_s": round(load_s, 2), "machine": machine.describe(),
            "label_probs": label_probs,
            "grammar_warmup": {"schemas": len(by_schema), "seconds": round(grammar_s, 3)}, "first_pass": first_pass,
            "engine_info": info, "passes": passes, "profiles": profiles}


def _profile(engine, reqs: dict[str, list], spec: dict[str, Any], key: str) -> dict[str, Any]:
    """One more pass per arm, not timed, with py-spy sampling this process and its children (the engine core
    and its worker) without pausing them: where each arm's time goes (bench.stacks)."""
    from .stacks import Recording

    out: dict[str, Any] = {}
    for arm in ("unconstrained", "constrained"):
        engine.reset_prefix_cache()
        path = Path(spec["profiles_dir"]) / f"{key}-{arm}.txt"
        rec = Recording(os.getpid(), path, spec["profile_rate"])
        time.sleep(1.0)  # py-spy attaches to every process of the tree
        ts = time.perf_counter()
        engine.generate(reqs[arm])
        gen_s = time.perf_counter() - ts
        said = rec.stop()
        out[arm] = {"path": str(path), "gen_s": round(gen_s, 3), "py_spy": said}
        print(f"[pass] profiled {arm}: {round(gen_s, 1)} s; {said}", flush=True)
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--spec", required=True, type=click.Path(dir_okay=False, path_type=Path), help="spec.json written by bench.sweep")
@click.option("--backend", required=True, type=click.Choice(["outlines", "xgrammar", "guidance"]))
@click.option("--batch", required=True, type=int)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="result JSON to write")
def main(spec: Path, backend: str, batch: int, out: Path) -> None:
    """One point of `evaluate constraint-cost` in its own process (bench.sweep starts it)."""
    spec_doc = json.loads(spec.read_text(encoding="utf-8"))
    try:
        result = run_point(spec_doc, backend, batch, out)
    except EngineDied as e:  # one line the parent reports as this point's failure
        raise SystemExit(f"error: {e}") from None
    atomic_write_text(out, json.dumps(result, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
