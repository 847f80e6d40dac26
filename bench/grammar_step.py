"""What one decoding step of one request costs each structured-outputs backend on the host CPU (issue 34): vLLM's
own backend classes (outlines, xgrammar, guidance) compile a record's schema, then follow a real answer token by
token, timing ``fill_bitmask`` (the next token's mask over the whole vocabulary) and ``accept_tokens`` (the
grammar's advance) at each token, as vLLM's engine core calls them once per request per step.

    patent-risk bench grammar-step --model artifacts/models/gemma-3-270m --data data/demo/eval.jsonl --schema v2

Each answer (the records' gold answers, or --answers: a JSONL of {"record_id", "raw_output"} such as evaluate batch's
outputs.jsonl) is tokenized and replayed under its record's schema (one the grammar refuses is counted and its
remaining tokens skipped).
Single-threaded and without an engine: the CPU time a GPU server's host spends per request per step, which
overlaps the forward there (vLLM fills the next step's masks while the model runs). Prints a Markdown table.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import numpy as np

BACKENDS = ("outlines", "xgrammar", "guidance")


def make_backend(name: str, tokenizer, vocab_size: int):
    """vLLM's backend class, given the few settings it reads from a VllmConfig."""
    from vllm.config.structured_outputs import StructuredOutputsConfig

    config = SimpleNamespace(structured_outputs_config=StructuredOutputsConfig(backend=name), model_config=None,
                             speculative_config=None)
    if name == "outlines":
        from vllm.v1.structured_output.backend_outlines import OutlinesBackend as cls
    elif name == "xgrammar":
        from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend as cls
    else:
        from vllm.v1.structured_output.backend_guidance import GuidanceBackend as cls
    return cls(vllm_config=config, tokenizer=tokenizer, vocab_size=vocab_size)


def replay(backend, schema: dict[str, Any], tokens: list[int]) -> dict[str, Any]:
    from vllm.v1.structured_output.backend_types import StructuredOutputOptions

    t0 = time.perf_counter()
    grammar = backend.compile_grammar(StructuredOutputOptions.JSON, json.dumps(schema))
    compile_s = time.perf_counter() - t0
    bitmask = backend.allocate_token_bitmask(1)
    fills, accepts = [], []
    for t in tokens:
        t1 = time.perf_counter()
        grammar.fill_bitmask(bitmask, 0)
        t2 = time.perf_counter()
        allowed = bool((bitmask[0, t // 32] >> (t % 32)) & 1)
        ok = grammar.accept_tokens("r", [t])
        t3 = time.perf_counter()
        if not (allowed and ok):
            return {"compile_s": compile_s, "refused_at": len(fills), "fill_us": fills, "accept_us": accepts}
        fills.append((t2 - t1) * 1e6)
        accepts.append((t3 - t2) * 1e6)
    return {"compile_s": compile_s, "refused_at": None, "fill_us": fills, "accept_us": accepts}


def _stats(values: list[float]) -> str:
    a = np.asarray(values)
    return f"{a.mean():.0f} / {np.percentile(a, 50):.0f} / {np.percentile(a, 99):.0f}"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, help="The model whose tokenizer and vocabulary the grammars are compiled for.")
@click.option("--answers", default=None, type=click.Path(exists=True, dir_okay=False),
              help="JSONL of record_id, raw_output (default: the records' gold answers, as the trainer writes them).")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="The dataset the records come from.")
@click.option("--schema", "schema_name", default="v1", show_default=True)
@click.option("--backends", default=",".join(BACKENDS), show_default=True)
@click.option("--limit", default=16, show_default=True, help="Answers replayed per backend.")
def main(model: str, answers: str, data: str, schema_name: str, backends: str, limit: int) -> None:
    """Per-token CPU cost (us: mean / p50 / p99) of each backend's mask fill and advance on real answers."""
    import os

    from transformers import AutoConfig, AutoTokenizer

    from patent_risk.runtime import cpu_env

    os.environ.update(cpu_env.structured_outputs_env(model))  # the compile timeout and outlines' disk cache, as engines get
    from vllm.plugins import load_general_plugins

    load_general_plugins()  # as in every vLLM process: this project's outlines cache key among them (a warm disk cache)

    from patent_risk.schemas.output import load_schema, specialize
    from patent_risk.schemas.prompt import render_answer
    from patent_risk.schemas.records import load_dataset

    tok = AutoTokenizer.from_pretrained(model)
    cfg = AutoConfig.from_pretrained(model)
    vocab_size = getattr(getattr(cfg, "text_config", cfg), "vocab_size")
    loaded = load_dataset(data).records
    records = {r.id: r for r in loaded}
    schema = load_schema(schema_name)
    if answers:
        rows = [json.loads(x) for x in Path(answers).read_text(encoding="utf-8").splitlines() if x.strip()][:limit]
    else:
        rows = [{"record_id": r.id, "raw_output": render_answer(r.label, schema_name)} for r in loaded[:limit]]
    cases = [(specialize(schema, records[r["record_id"]].element_ids), tok(r["raw_output"], add_special_tokens=False)["input_ids"])
             for r in rows]
    print(f"{len(cases)} answers, {sum(len(t) for _, t in cases)} tokens, vocabulary {vocab_size}, schema {schema_name}")
    print("| backend | first grammar s (compile or cache load) | tokens replayed | fill_bitmask us (mean / p50 / p99) | accept_tokens us (mean / p50 / p99) | refused |")
    print("|---|---:|---:|---|---|---:|")
    for name in backends.split(","):
        backend = make_backend(name, tok, vocab_size)
        fills, accepts, refused, first_compile = [], [], 0, None
        for schema_i, tokens in cases:
            out = replay(backend, schema_i, tokens)
            first_compile = out["compile_s"] if first_compile is None else first_compile
            fills += out["fill_us"]
            accepts += out["accept_us"]
            refused += out["refused_at"] is not None
        print(f"| {name} | {first_compile:.2f} | {len(fills)} | {_stats(fills)} | {_stats(accepts)} | {refused} |")


if __name__ == "__main__":
    main()
