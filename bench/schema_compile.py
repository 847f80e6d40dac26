"""How long each output schema's per-record decoding form takes outlines to compile on a model's vocabulary
(issue 18: a free-text ``reason`` with ``maxLength`` may cost far more than labels alone).

For every schema (v1, v2, v3) and every distinct list of element ids in the data (the demo's E1..E3 to
E1..E6), the record-specialized schema (schemas.output.specialize) goes through the same steps as vLLM's
outlines backend: ``build_regex_from_schema``, then ``outlines_core.Index`` over the tokenizer's reduced
vocabulary (vLLM's own ``_reduced_vocabulary``), timed cold (no cache). One process, one thread, nothing else
running: compare schemas as ratios on one machine.

    patent-risk bench schema-compile --data data/demo/eval.jsonl --out artifacts/bench/schema-compile
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click

from patent_risk.schemas.output import load_schema, schema_hash, schema_names, specialize


def measure(model_path: str, id_lists: list[list[str]], names: list[str], repeats: int = 1) -> list[dict]:
    import outlines_core as oc
    from outlines_core import json_schema
    from transformers import AutoTokenizer
    from vllm.v1.structured_output import utils

    tok = AutoTokenizer.from_pretrained(model_path)
    t0 = time.perf_counter()
    vocab = oc.Vocabulary(tok.eos_token_id, utils._reduced_vocabulary(tok))
    vocab_s = time.perf_counter() - t0
    rows = []
    for name in names:
        for ids in id_lists:
            spec = json.dumps(specialize(load_schema(name), ids))
            t0 = time.perf_counter()
            regex = json_schema.build_regex_from_schema(spec)
            regex_s = time.perf_counter() - t0
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                oc.Index(regex, vocab)
                times.append(time.perf_counter() - t0)
            rows.append({"schema": name, "hash": schema_hash(load_schema(name)), "elements": len(ids),
                         "regex_chars": len(regex), "regex_s": round(regex_s, 4), "index_s": [round(t, 3) for t in times],
                         "vocabulary": len(tok), "vocabulary_s": round(vocab_s, 2)})
            print(f"{name} {len(ids)} elements: regex {len(regex):,} chars, index {min(times):.2f} s", flush=True)
    return rows


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", default="data/demo/eval.jsonl", show_default=True, type=click.Path(exists=True, dir_okay=False),
              help="Records whose distinct element-id lists are compiled.")
@click.option("--model", default=None, help="Model folder or name (default: the embedded model).")
@click.option("--schema", "names", multiple=True, type=click.Choice(schema_names()), help="Default: every schema.")
@click.option("--repeats", default=1, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Writes compile.json and compile.md here.")
def main(data: str, model: str | None, names: tuple[str, ...], repeats: int, out: str) -> None:
    """Time outlines' compile of each schema's per-record form on a model's vocabulary (cold, one thread)."""
    from patent_risk.evaluate.report_doc import md_table
    from patent_risk.runtime.embedded import resolve_model
    from patent_risk.schemas.records import load_dataset

    model_path = resolve_model(model, log=print)
    id_lists = list({tuple(r.element_ids): None for r in load_dataset(data).records})
    id_lists = [list(ids) for ids in sorted(id_lists, key=len)]
    rows = measure(model_path, id_lists, list(names) or schema_names(), repeats)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"model": model_path, "data": data, "machine": platform.processor() or platform.machine(), "rows": rows}
    (out_dir / "compile.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    table = md_table(["schema", "elements", "regex chars", "compile s (min)"],
                     [[r["schema"], str(r["elements"]), f"{r['regex_chars']:,}", f"{min(r['index_s']):.2f}"] for r in rows],
                     "lrrr")
    (out_dir / "compile.md").write_text(table + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
