"""`patent-risk serve bench`: real prompts from a dataset through a running server's OpenAI-compatible API, with
bounded concurrency, streaming so that time to first token and inter-token latency are measured.

One call runs the matrix: served model (base or adapter names on one LoRA-enabled server) x arm
(unconstrained, constrained) x concurrency.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from patent_risk.schemas.errors import UserError

PERCENTILES = (50, 90, 99)


@dataclass
class RequestStats:
    ok: bool
    ttft: float = 0.0
    e2e: float = 0.0
    output_tokens: int = 0
    itls: list[float] = field(default_factory=list)
    error: str = ""


def _pcts(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in PERCENTILES}
    arr = np.asarray(values) * 1000.0
    return {f"p{p}": round(float(np.percentile(arr, p)), 2) for p in PERCENTILES}


def summarize(stats: list[RequestStats], wall: float) -> dict[str, Any]:
    good = [s for s in stats if s.ok]
    tokens = sum(s.output_tokens for s in good)
    tpots = [(s.e2e - s.ttft) / (s.output_tokens - 1) for s in good if s.output_tokens > 1]
    return {
        "requests": len(stats), "errors": len(stats) - len(good), "wall_s": round(wall, 3),
        "request_throughput": round(len(good) / wall, 4) if wall else None,
        "output_tok_s": round(tokens / wall, 2) if wall else None, "output_tokens": tokens,
        "ttft_ms": _pcts([s.ttft for s in good]), "tpot_ms": _pcts(tpots),
        "itl_ms": _pcts([x for s in good for x in s.itls]), "e2e_ms": _pcts([s.e2e for s in good]),
        "error_examples": sorted({s.error for s in stats if not s.ok})[:3],
    }


async def _one(client, model: str, req, seed: int) -> RequestStats:
    extra = req.chat_body_extra()
    t0 = time.perf_counter()
    first = last = None
    itls: list[float] = []
    tokens = 0
    try:
        stream = await client.chat.completions.create(
            model=model, messages=req.messages, temperature=0.0, max_tokens=req.max_tokens, seed=seed, stream=True,
            stream_options={"include_usage": True}, extra_body=extra)
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                if first is None:
                    first = now
                else:
                    itls.append(now - last)
                last = now
    except Exception as e:  # every failure is counted and reported, none stops the run
        return RequestStats(ok=False, error=f"{type(e).__name__}: {str(e)[:120]}")
    end = time.perf_counter()
    return RequestStats(ok=True, ttft=(first or end) - t0, e2e=end - t0, output_tokens=tokens, itls=itls)


async def _run_level(url: str, api_key: str | None, model: str, requests, concurrency: int, seed: int):
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key or "EMPTY", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(concurrency)

    async def bounded(req):
        async with sem:
            return await _one(client, model, req, seed)

    t0 = time.perf_counter()
    stats = await asyncio.gather(*(bounded(r) for r in requests))
    wall = time.perf_counter() - t0
    await client.close()
    return stats, wall


def prompt_requests(data: str, num_requests: int, tokenizer_model: str, schema_name: str, arms: list[bool]):
    """The tokenizer and, per arm, the requests for the dataset's first ``num_requests`` records (cycling
    through the file when it has fewer)."""
    from transformers import AutoTokenizer

    from patent_risk.runtime.requests import build_requests
    from patent_risk.schemas.prompt import messages_for
    from patent_risk.schemas.records import load_dataset

    records = load_dataset(data).records
    if not records:
        raise UserError(f"{data}: no records")
    picked = [records[i % len(records)] for i in range(num_requests)]
    tok = AutoTokenizer.from_pretrained(tokenizer_model)

    def count(text):
        return len(tok(text, add_special_tokens=False)["input_ids"])

    # a template without a system role gets the system text folded, as evaluate batch does
    return tok, {constrained: [dataclasses.replace(r, messages=messages_for(tok, r.messages))
                               for r in build_requests(picked, schema_name, constrained, count)]
                 for constrained in arms}


def run_bench(url: str, served_models: list[str], data: str, arms: list[bool], concurrencies: list[int],
              num_requests: int, tokenizer_model: str, schema_name: str = "v1", api_key: str | None = None,
              seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    _, by_arm = prompt_requests(data, num_requests, tokenizer_model, schema_name, arms)
    results = []
    for model in served_models:
        for constrained in arms:
            reqs = by_arm[constrained]
            for c in concurrencies:
                stats, wall = asyncio.run(_run_level(url, api_key, model, reqs, c, seed))
                row = {"served_model": model, "constrained": constrained, "concurrency": c, **summarize(stats, wall)}
                results.append(row)
                log(f"{model:>24} {'constrained' if constrained else 'unconstrained':>13} c={c:<3} "
                    f"{row['output_tok_s']} tok/s, TTFT p50 {row['ttft_ms']['p50']} ms, errors {row['errors']}")
    return {"url": url, "data": data, "schema": schema_name, "num_requests": num_requests, "results": results,
            "ratios": ratios(results, served_models)}


def ratios(results: list[dict[str, Any]], served_models: list[str]) -> list[dict[str, Any]]:
    """Adapter/base (first served model is the reference) and constrained/unconstrained throughput ratios."""
    key = {(r["served_model"], r["constrained"], r["concurrency"]): r["output_tok_s"] for r in results}
    out = []
    for (model, constrained, c), tps in key.items():
        ref = key.get((served_models[0], constrained, c))
        if model != served_models[0] and ref:
            out.append({"kind": f"{model}/{served_models[0]}", "constrained": constrained, "concurrency": c,
                        "ratio": round(tps / ref, 3)})
        free = key.get((model, False, c))
        if constrained and free:
            out.append({"kind": "constrained/unconstrained", "served_model": model, "concurrency": c,
                        "ratio": round(tps / free, 3)})
    return out


def to_markdown(doc: dict[str, Any]) -> str:
    from patent_risk.evaluate.report_doc import md_table

    rows = [(r["served_model"], "constrained" if r["constrained"] else "unconstrained", r["concurrency"], r["request_throughput"],
             r["output_tok_s"], f"{r['ttft_ms']['p50']} / {r['ttft_ms']['p99']}", f"{r['tpot_ms']['p50']} / {r['tpot_ms']['p99']}",
             f"{r['itl_ms']['p50']} / {r['itl_ms']['p99']}", f"{r['e2e_ms']['p50']} / {r['e2e_ms']['p90']} / {r['e2e_ms']['p99']}",
             r["errors"]) for r in doc["results"]]
    parts = [md_table(["served model", "arm", "concurrency", "req/s", "output tok/s", "TTFT p50/p99 ms", "TPOT p50/p99 ms",
                       "ITL p50/p99 ms", "E2E p50/p90/p99 ms", "errors"], rows, align="llrrrrrrrr")]
    if doc["ratios"]:
        ratio_rows = [(q["kind"], q.get("served_model") or ("constrained" if q.get("constrained") else "unconstrained"),
                       q["concurrency"], q["ratio"]) for q in doc["ratios"]]
        parts.append(md_table(["ratio", "served model / arm", "concurrency", "output tok/s ratio"], ratio_rows, align="llrr"))
    return "\n\n".join(parts) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    series: dict[str, list[tuple[int, float, float]]] = {}
    for r in doc["results"]:
        name = f"{r['served_model']} ({'constrained' if r['constrained'] else 'free'})"
        series.setdefault(name, []).append((r["concurrency"], r["output_tok_s"] or 0, r["ttft_ms"]["p50"] or 0))
    for name, pts in series.items():
        pts.sort()
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=name)
    axes[0].set(xlabel="concurrency", ylabel="output tokens/s", title="throughput")
    axes[1].set(xlabel="concurrency", ylabel="TTFT p50 (ms)", title="time to first token")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_bench(doc: dict[str, Any], out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    md = out.with_suffix(".md")
    md.write_text(to_markdown(doc), encoding="utf-8")
    png = out.with_suffix(".png")
    plot(doc, png)
    return [out, md, png]
