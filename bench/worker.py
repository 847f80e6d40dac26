"""One configuration of `evaluate bench`, in its own process (started by bench.offline, one at a time):

    python -m patent_risk.bench.worker --config NAME --spec spec.json --out result.json

``--config prepare`` builds the requests once for every configuration (runtime.requests.build_requests:
prompts, per-record schemas, max_tokens; plus the HF prompt token ids) and, when a merged configuration
is asked for, merges the adapter into the base (train.merge). Any other config loads its engine, warms it
up, measures schema compilation where constrained, generates, and writes its outputs and timings. A vLLM
configuration generates twice on the same engine: a cold pass (outlines' disk cache an empty folder of its
own, no grammar compiled yet) and, unless the spec turns it off, a warm pass (every grammar compiled and
cached, vLLM's prefix cache emptied first so that the prompts are computed again).

The worker writes ``gen`` into ``<out>.phase`` while generating so that the parent's memory sampler can
tell the generation peak from the load peak.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click

from patent_risk.runtime.artifacts import atomic_write_text
from patent_risk.runtime.engine_death import EngineDied
from patent_risk.runtime.procs import CpuWindow

from .offline_configs import COMPILE_WHAT, CONFIGS, PREPARE, phase_file

WARMUP_TOKENS = 2


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False) + "\n")


def _phase(out: Path, value: str) -> None:
    phase_file(out).write_text(value)


def _distinct(schemas: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for s in schemas:
        seen.setdefault(json.dumps(s), None)  # as vLLM keys a JSON constraint (json.dumps of the dict)
    return list(seen)


# --------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------


def prepare(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from patent_risk.runtime.requests import build_requests
    from patent_risk.schemas.prompt import prompt_from_record
    from patent_risk.schemas.records import load_dataset
    from patent_risk.train.features import prompt_ids

    records = load_dataset(spec["data"], limit=spec["limit"]).records
    if spec.get("own_ids"):
        from patent_risk.schemas.records import with_own_element_ids

        records = [with_own_element_ids(r) for r in records]
    tok = AutoTokenizer.from_pretrained(spec["model"])
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731 (as VllmOffline.count_tokens)
    prompt = prompt_from_record(spec.get("prompt"), "spec.json")  # the run's prompt (the adapter's, or --prompt-template)
    reqs = build_requests(records, spec["schema"], True, count, prompt)
    rows = [{"record_id": r.record_id, "messages": r.messages, "max_tokens": r.max_tokens, "json_schema": r.json_schema,
             "prompt_ids": prompt_ids(tok, rec, spec["schema"], prompt)} for r, rec in zip(reqs, records)]
    _write_json(Path(spec["requests"]), rows)
    result: dict[str, Any] = {"config": PREPARE, "requests": len(rows)}
    if spec.get("merged"):
        from patent_risk.train.merge import merge

        t0 = time.perf_counter()
        merge(spec["adapter"]["path"], spec["merged"], base=spec["model"], log=print)
        result["merge_s"] = round(time.perf_counter() - t0, 2)
    return result


# --------------------------------------------------------------------------
# HF transformers (+ PEFT, + outlines)
# --------------------------------------------------------------------------


def run_hf(name: str, spec: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    import torch
    from transformers import LogitsProcessorList

    from patent_risk.runtime.cpu_env import default_dtype
    from patent_risk.runtime.hf_engine import HfPeft, finish

    cfg = CONFIGS[name]
    dtype = default_dtype()
    t0 = time.perf_counter()
    hf = HfPeft(spec["model"], spec["adapter"]["path"], dtype, threads=spec.get("hf_threads") or os.cpu_count() or 1)
    model, tok, eos, generate = hf.model, hf.tok, hf.eos, hf.generate_ids

    generate([rows[0]["prompt_ids"]], WARMUP_TOKENS)
    info: dict[str, Any] = {"name": "transformers", "version": _version("transformers"), "peft": _version("peft"),
                            "dtype": dtype, "threads": torch.get_num_threads()}
    compile_s = setup_s = None
    processors: list[Any] = []
    if cfg.constrained:
        import outlines
        from outlines.backends.llguidance import LLGuidanceBackend

        omodel = outlines.from_transformers(model, tok)
        # one constrained warm-up: llguidance's mask kernel is torch.compile'd on its first call
        ts = time.perf_counter()
        backend = LLGuidanceBackend(omodel)
        setup_s = time.perf_counter() - ts
        warm = backend.get_json_schema_logits_processor(json.dumps(rows[0]["json_schema"]))
        generate([rows[0]["prompt_ids"]], WARMUP_TOKENS, LogitsProcessorList([warm]))
        info.update(outlines=_version("outlines"), outlines_backend="llguidance", llguidance=_version("llguidance"))
    load_s = time.perf_counter() - t0 - (setup_s or 0.0)
    if cfg.constrained:
        compile_s = 0.0
        for r in rows:  # one processor per record: each record has its own schema
            ts = time.perf_counter()
            processors.append(backend.get_json_schema_logits_processor(json.dumps(r["json_schema"])))
            compile_s += time.perf_counter() - ts
        # For comparison with vllm-guidance: llguidance's own compile (an LLMatcher per distinct grammar),
        # which the processor does lazily at its first token; these matchers are thrown away.
        import llguidance

        grammars = list(dict.fromkeys(p.grammar for p in processors))
        ts = time.perf_counter()
        for g in grammars:
            llguidance.LLMatcher(backend.llg_tokenizer, g)
        info["llguidance_matcher_compile_s"] = round(time.perf_counter() - ts, 4)

    results: dict[str, tuple[list[int], str]] = {}
    _phase(out, "gen")
    window = CpuWindow()
    t0 = time.perf_counter()
    if cfg.constrained:
        for r, proc in zip(rows, processors):  # one record at a time
            gen = generate([r["prompt_ids"]], r["max_tokens"], LogitsProcessorList([proc]))[0]
            results[r["record_id"]] = finish(gen, eos, r["max_tokens"])
    else:
        groups: dict[int, list[dict[str, Any]]] = {}
        for r in rows:  # batches share max_new_tokens: group by each record's own budget
            groups.setdefault(r["max_tokens"], []).append(r)
        bs = spec["batch_size"]
        info["batches"] = []  # (records, max_new_tokens) of each generate call
        for max_new, group in groups.items():
            for i in range(0, len(group), bs):
                chunk = group[i:i + bs]
                info["batches"].append([len(chunk), max_new])
                for r, gen in zip(chunk, generate([r["prompt_ids"] for r in chunk], max_new)):
                    results[r["record_id"]] = finish(gen, eos, r["max_tokens"])
    gen_s = time.perf_counter() - t0
    contention = window.stop()
    _phase(out, "done")
    outputs = []
    for r in rows:
        ids, reason = results[r["record_id"]]
        outputs.append({"record_id": r["record_id"], "raw_output": hf.decode(ids),
                        "finish_reason": reason, "prompt_tokens": len(r["prompt_ids"]), "output_tokens": len(ids),
                        "max_tokens": r["max_tokens"]})
    info["batch_size"] = spec["batch_size"] if not cfg.constrained else 1
    return {"config": name, "load_s": load_s, "gen_s": gen_s, "compile_s": compile_s, "compile_setup_s": setup_s,
            "compile_what": COMPILE_WHAT["hf"] if cfg.constrained else None,
            "distinct_schemas": len(_distinct([r["json_schema"] for r in rows])) if cfg.constrained else None,
            "outputs": outputs, "engine_info": info, "contention": contention}


def _version(dist: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------
# vLLM offline (+ LoRA or merged)
# --------------------------------------------------------------------------


def _structured_backend(llm, backend: str):
    """vLLM's own structured-outputs backend class, built with the engine's config and tokenizer as the engine
    core builds it (outlines: with the index cache vLLM's settings choose, here the disk cache)."""
    from vllm.tokenizers import cached_tokenizer_from_config

    if backend == "outlines":
        from vllm.v1.structured_output.backend_outlines import OutlinesBackend as Backend
    elif backend == "xgrammar":
        from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend as Backend
    elif backend == "guidance":
        from vllm.v1.structured_output.backend_guidance import GuidanceBackend as Backend
    else:
        raise ValueError(backend)
    vc = llm.llm_engine.vllm_config
    tokenizer = cached_tokenizer_from_config(model_config=vc.model_config)
    return Backend(vc, tokenizer=tokenizer, vocab_size=vc.model_config.get_vocab_size())


def _time_compiles(be, schemas: list[str]) -> list[float]:
    from vllm.v1.structured_output.backend_types import StructuredOutputOptions

    times = []
    for s in schemas:
        t0 = time.perf_counter()
        be.compile_grammar(StructuredOutputOptions.JSON, s)
        times.append(time.perf_counter() - t0)
    return times


def measure_vllm_compile(llm, backend: str, schemas: list[str]) -> tuple[float, list[float], list[float] | None]:
    """(setup seconds, cold compile seconds per schema, warm seconds per schema or None): vLLM's own backend
    class built with the engine's config and tokenizer, then each distinct schema compiled as the engine core
    would (a JSON constraint). Cold: nothing cached (outlines gets a private in-memory cache, so the disk cache
    neither answers nor learns). Warm, for xgrammar and guidance: each schema again on the same backend (xgrammar
    answers from its compiler cache; guidance keeps none). outlines' warm figure is measured after generation
    by ``measure_outlines_warm``, from the cache the engine itself filled."""
    t0 = time.perf_counter()
    be = _structured_backend(llm, backend)
    setup = time.perf_counter() - t0
    if backend == "outlines":
        be.cache = {}
    cold = _time_compiles(be, schemas)
    warm = None if backend == "outlines" else _time_compiles(be, schemas)
    be.destroy()
    return setup, cold, warm


def measure_outlines_warm(llm, schemas: list[str]) -> list[float]:
    """What a request whose schema was compiled before pays with the outlines backend: a backend built as the
    engine core's (the index cache vLLM's settings choose: outlines' disk cache, which the cold pass filled),
    one compile per schema."""
    be = _structured_backend(llm, "outlines")
    _time_compiles(be, schemas[:1])  # the first lookup opens the cache's database
    times = _time_compiles(be, schemas)
    be.destroy()
    return times


def run_vllm(name: str, spec: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    from patent_risk.runtime.engines import AdapterSpec, VllmOffline
    from patent_risk.runtime.requests import GenRequest

    cfg = CONFIGS[name]
    if cfg.adapter_mode == "merged":
        model, adapter = spec["merged"], None
    else:
        model, adapter = spec["model"], AdapterSpec(spec["adapter"]["name"], spec["adapter"]["path"])
    if cfg.constrained:  # cold: outlines' disk cache starts empty, in a folder of this configuration's own
        cache = Path(spec["workdir"]) / f"outlines-cache-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        os.environ["OUTLINES_CACHE_DIR"] = str(cache)  # structured_outputs_env keeps a value already set
    t0 = time.perf_counter()
    engine = VllmOffline(model, adapter, backend=cfg.backend or "outlines", max_model_len=spec["max_model_len"],
                         gpu_memory_utilization=spec.get("gpu_memory_utilization"), seed=spec.get("seed", 0),
                         max_batch=len(rows), enforce_eager=cfg.eager,  # the KV cache is sized for all samples at once
                         max_lora_rank=spec.get("max_lora_rank", 16), engine_args=spec.get("engine_args"))
    try:
        engine.generate([GenRequest(rows[0]["record_id"], rows[0]["messages"], WARMUP_TOKENS, None)])
        load_s = time.perf_counter() - t0
        compile_s = setup_s = None
        compile_cold: list[float] | None = None
        compile_warm: list[float] | None = None
        schemas = _distinct([r["json_schema"] for r in rows]) if cfg.constrained else []
        measured = schemas[:spec.get("compile_sample") or len(schemas)]
        if cfg.constrained:
            setup_s, compile_cold, compile_warm = measure_vllm_compile(engine.llm, cfg.backend, measured)
            compile_s = sum(compile_cold)
        reqs = [GenRequest(r["record_id"], r["messages"], r["max_tokens"], r["json_schema"] if cfg.constrained else None,
                           label_probs=cfg.label_probs) for r in rows]
        _phase(out, "gen")
        window = CpuWindow()
        t0 = time.perf_counter()
        results = engine.generate(reqs)
        gen_s = time.perf_counter() - t0
        contention = window.stop()
        precompiled_cold = dict(engine.precompiled)
        warm = None
        if spec.get("warm_pass", True):
            engine.llm.reset_prefix_cache()
            window = CpuWindow()
            t0 = time.perf_counter()
            again = engine.generate(reqs)
            warm_s = time.perf_counter() - t0
            warm = {"gen_s": warm_s, "output_tokens": sum(g.output_tokens for g in again),
                    "cached_prompt_tokens": sum(g.cached_tokens for g in again),
                    "same_outputs": [g.raw_output for g in again] == [g.raw_output for g in results],
                    "finish_reasons": dict(sorted(Counter(g.finish_reason for g in again).items())),
                    "ttft_s": [g.ttft_s for g in again], "contention": window.stop()}
        if cfg.constrained and cfg.backend == "outlines":
            compile_warm = measure_outlines_warm(engine.llm, measured)
        _phase(out, "done")
        info = dict(engine.description)
    finally:
        engine.close()
    info["adapter"] = "merged into the base (no LoRA)" if adapter is None else f"LoRA module {adapter.name}"
    if cfg.constrained and cfg.backend == "outlines":  # the front end's compile before each pass (cumulative)
        info["outlines_precompiled"] = {"cold": precompiled_cold, "cold_and_warm": dict(engine.precompiled)}
    budget = {r["record_id"]: r["max_tokens"] for r in rows}
    outputs = [{"record_id": g.record_id, "raw_output": g.raw_output, "finish_reason": g.finish_reason,
                "prompt_tokens": g.prompt_tokens, "output_tokens": g.output_tokens, "max_tokens": budget[g.record_id],
                "cached_prompt_tokens": g.cached_tokens, "ttft_s": g.ttft_s}
               for g in results]
    return {"config": name, "load_s": load_s, "gen_s": gen_s, "compile_s": compile_s, "compile_setup_s": setup_s,
            "compile_what": COMPILE_WHAT["vllm"] if cfg.constrained else None,
            "compile_per_schema_s": compile_cold, "compile_per_schema_warm_s": compile_warm,
            "compile_measured_schemas": len(measured) if cfg.constrained else None,
            "distinct_schemas": len(schemas) if cfg.constrained else None, "outputs": outputs, "engine_info": info,
            "contention": contention, "warm": warm}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", required=True, type=click.Choice([PREPARE, *CONFIGS]))
@click.option("--spec", required=True, type=click.Path(dir_okay=False, path_type=Path), help="spec.json written by bench.offline")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="result JSON to write")
def main(config: str, spec: Path, out: Path) -> None:
    """One configuration of `evaluate bench` in its own process (bench.offline starts it)."""
    spec_doc = json.loads(spec.read_text(encoding="utf-8"))
    if config == PREPARE:
        result = prepare(spec_doc, out)
    else:
        rows = json.loads(Path(spec_doc["requests"]).read_text(encoding="utf-8"))[:spec_doc["limits"][config]]
        runner = run_hf if CONFIGS[config].engine == "hf" else run_vllm
        try:
            result = runner(config, spec_doc, rows, out)
        except EngineDied as e:  # one line the parent reports as this configuration's failure (bench.offline)
            raise SystemExit(f"error: {e}") from None
        outputs_dir = Path(spec_doc["outputs_dir"])
        outputs_dir.mkdir(parents=True, exist_ok=True)
        with open(outputs_dir / f"{config}.jsonl", "w", encoding="utf-8") as f:
            for o in result["outputs"]:
                f.write(json.dumps(o, ensure_ascii=False) + "\n")
    _write_json(out, result)


if __name__ == "__main__":
    main()
