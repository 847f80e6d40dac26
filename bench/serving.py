"""`patent-risk serve bench`: real prompts from a dataset through a running server's OpenAI-compatible API, with
bounded concurrency, streaming so that time to first token and inter-token latency are measured.

One call runs the matrix: served model (base or adapter names on one LoRA-enabled server) x arm
(unconstrained, constrained) x concurrency, each cell ``repeats`` times. The arms are measured alike, as
`evaluate constraint-cost` measures them offline: every distinct schema is compiled before any timed pass
(the grammar cache warm), the server's prefix cache is emptied before every pass (POST /reset_prefix_cache,
which `serve start` enables on a loopback address), and the arms alternate which goes first from one repeat to
the next, so that a drift of the machine falls on both alike.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
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
    cached_tokens: int | None = None  # prompt tokens the server's prefix cache served (usage.prompt_tokens_details)


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
        "cached_prompt_tokens": (sum(s.cached_tokens for s in good if s.cached_tokens is not None)
                                 if any(s.cached_tokens is not None for s in good) else None),
    }


async def _one(client, model: str, req, seed: int) -> RequestStats:
    extra = req.chat_body_extra()
    t0 = time.perf_counter()
    first = last = None
    itls: list[float] = []
    tokens = 0
    cached = None
    try:
        stream = await client.chat.completions.create(
            model=model, messages=req.messages, temperature=0.0, max_tokens=req.max_tokens, seed=seed, stream=True,
            stream_options={"include_usage": True}, extra_body=extra)
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
                details = getattr(chunk.usage, "prompt_tokens_details", None)
                cached = getattr(details, "cached_tokens", None) if details is not None else None
            if chunk.choices and chunk.choices[0].delta.content:
                if first is None:
                    first = now
                else:
                    itls.append(now - last)
                last = now
    except Exception as e:  # every failure is counted and reported, none stops the run
        return RequestStats(ok=False, error=f"{type(e).__name__}: {str(e)[:120]}")
    end = time.perf_counter()
    return RequestStats(ok=True, ttft=(first or end) - t0, e2e=end - t0, output_tokens=tokens, itls=itls,
                        cached_tokens=cached if isinstance(cached, int) else None)


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


def warm_up(url: str, api_key: str | None, served_models: list[str], by_arm: dict[bool, list], seed: int) -> dict[str, Any]:
    """Before any timed pass, per served model: one 2-token request per distinct schema (its grammar compiled
    into the server's cache, as a user's second run finds it) and one unconstrained. A failure here (a name
    the server does not serve, a schema it refuses) stops the bench before its figures."""
    reqs = []
    if True in by_arm:
        distinct: dict[str, Any] = {}
        for r in by_arm[True]:
            distinct.setdefault(json.dumps(r.json_schema, sort_keys=True), r)
        reqs += [dataclasses.replace(r, max_tokens=2) for r in distinct.values()]
    if False in by_arm:
        reqs.append(dataclasses.replace(by_arm[False][0], max_tokens=2))
    t0 = time.perf_counter()
    for model in served_models:
        stats, _ = asyncio.run(_run_level(url, api_key, model, reqs, 8, seed))
        failed = sorted({s.error for s in stats if not s.ok})
        if failed:
            raise UserError(f"{url}: the warm-up requests to {model!r} failed ({len(failed)} kinds), e.g. {failed[0]}")
    return {"requests_per_model": len(reqs), "schemas": len(reqs) - (1 if False in by_arm else 0),
            "seconds": round(time.perf_counter() - t0, 3)}


def _cell(passes: list[dict[str, Any]], stats: list[list[RequestStats]]) -> dict[str, Any]:
    """One served model x arm x concurrency over its passes: throughput as the median pass (min-max),
    latencies as percentiles over every request of every pass."""
    pooled = summarize([s for st in stats for s in st], sum(p["wall_s"] for p in passes))
    req = [p["request_throughput"] for p in passes]
    tok = [p["output_tok_s"] for p in passes]
    return {**pooled, "requests": passes[0]["requests"], "passes": len(passes),
            "errors": sum(p["errors"] for p in passes),
            "wall_s": round(median(p["wall_s"] for p in passes), 3),
            "request_throughput": round(median(req), 4), "request_throughput_min": min(req), "request_throughput_max": max(req),
            "output_tok_s": round(median(tok), 2), "output_tok_s_min": min(tok), "output_tok_s_max": max(tok),
            "output_tokens": passes[0]["output_tokens"], "same_output_tokens": len({p["output_tokens"] for p in passes}) == 1,
            "prefix_cache": sorted({p["prefix_cache"] for p in passes}),
            "cached_prompt_tokens": [p["cached_prompt_tokens"] for p in passes]}


def run_bench(url: str, served_models: list[str], data: str, arms: list[bool], concurrencies: list[int],
              num_requests: int, tokenizer_model: str, schema_name: str = "v1", api_key: str | None = None,
              seed: int = 0, log: Callable[[str], None] = print, repeats: int = 1,
              requests_at: dict[int, int] | None = None, reset_cache: bool = True) -> dict[str, Any]:
    """Every served model x arm x concurrency, ``repeats`` passes each (arms alternating, the prefix cache
    emptied before each pass unless ``reset_cache`` is off); ``requests_at`` gives a concurrency level its own
    number of requests (the dataset's first N records)."""
    from patent_risk.runtime.engines import reset_server_prefix_cache

    from .sweep_summary import pass_order

    if repeats < 1:
        raise UserError(f"--repeats: at least 1, got {repeats}")
    counts = {c: (requests_at or {}).get(c, num_requests) for c in concurrencies}
    _, by_arm = prompt_requests(data, max(counts.values()), tokenizer_model, schema_name, arms)
    warm = warm_up(url, api_key, served_models, by_arm, seed)
    log(f"warm-up: {warm['schemas']} schemas compiled, {warm['seconds']} s")
    wanted = {"constrained" if a else "unconstrained" for a in arms}
    plan = [(r, arm == "constrained") for r, arm in pass_order(repeats) if arm in wanted]
    passes: list[dict[str, Any]] = []
    stats_of: dict[tuple[str, bool, int], list[list[RequestStats]]] = {}
    for model in served_models:
        for c in concurrencies:
            for i, (repeat, constrained) in enumerate(plan):
                state = reset_server_prefix_cache(url, api_key) if reset_cache else "kept (--keep-prefix-cache)"
                stats, wall = asyncio.run(_run_level(url, api_key, model, by_arm[constrained][:counts[c]], c, seed))
                one = summarize(stats, wall)
                passes.append({"served_model": model, "constrained": constrained, "concurrency": c, "repeat": repeat,
                               "order": i, "prefix_cache": state,
                               **{k: one[k] for k in ("requests", "errors", "wall_s", "request_throughput", "output_tok_s",
                                                      "output_tokens", "cached_prompt_tokens")}})
                stats_of.setdefault((model, constrained, c), []).append(stats)
                log(f"{model:>24} {'constrained' if constrained else 'unconstrained':>13} c={c:<3} "
                    f"{'' if repeats == 1 else f'repeat {repeat + 1}/{repeats} '}{one['request_throughput']} req/s, "
                    f"{one['output_tok_s']} tok/s, TTFT p50 {one['ttft_ms']['p50']} ms, errors {one['errors']}"
                    + ("" if state in ("reset", "kept (--keep-prefix-cache)") else f"; prefix cache {state}"))
    results = []
    for (model, constrained, c), stats in stats_of.items():
        mine = [p for p in passes if (p["served_model"], p["constrained"], p["concurrency"]) == (model, constrained, c)]
        results.append({"served_model": model, "constrained": constrained, "concurrency": c, **_cell(mine, stats)})
    return {"url": url, "data": data, "schema": schema_name, "num_requests": num_requests,
            "requests_at": {str(c): n for c, n in counts.items()}, "repeats": repeats, "warm_up": warm,
            "prefix_cache_reset": reset_cache, "results": results, "passes": passes,
            "ratios": ratios(results, served_models, passes)}


def ratios(results: list[dict[str, Any]], served_models: list[str],
           passes: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Adapter/base (first served model is the reference) and constrained/unconstrained ratios of the median
    passes: output tok/s (``ratio``) and requests/s (``request_ratio``, the offline sweep's samples/s), with each
    repeat's paired request ratio (its two adjacent passes)."""
    key = {(r["served_model"], r["constrained"], r["concurrency"]): r for r in results}
    each = {(p["served_model"], p["constrained"], p["concurrency"], p["repeat"]): p["request_throughput"] for p in passes or []}
    out = []
    for (model, constrained, c), row in key.items():
        ref = key.get((served_models[0], constrained, c))
        if model != served_models[0] and ref and ref["output_tok_s"]:
            out.append({"kind": f"{model}/{served_models[0]}", "constrained": constrained, "concurrency": c,
                        "ratio": round(row["output_tok_s"] / ref["output_tok_s"], 3)})
        free = key.get((model, False, c))
        if constrained and free and free["output_tok_s"]:
            paired = [round(v / each[(model, False, c, rep)], 3) for (m, con, cc, rep), v in sorted(each.items())
                      if (m, con, cc) == (model, True, c) and each.get((model, False, c, rep))]
            out.append({"kind": "constrained/unconstrained", "served_model": model, "concurrency": c,
                        "ratio": round(row["output_tok_s"] / free["output_tok_s"], 3),
                        "request_ratio": (round(row["request_throughput"] / free["request_throughput"], 3)
                                          if free["request_throughput"] else None),
                        "paired": paired})
    return out


def _span(r: dict[str, Any], key: str) -> str:
    if r.get("passes", 1) > 1:
        return f"{r[key]} ({r[key + '_min']}-{r[key + '_max']})"
    return str(r[key])


def to_markdown(doc: dict[str, Any]) -> str:
    from patent_risk.evaluate.report_doc import md_table

    repeats = doc.get("repeats", 1)
    head = (f"{repeats} pass{'es' if repeats > 1 else ''} per served model x arm x concurrency"
            + (", arms alternating which goes first" if repeats > 1 else "")
            + (f"; the prefix cache emptied before every pass ({', '.join(sorted({p['prefix_cache'] for p in doc['passes']}))})"
               if doc.get("prefix_cache_reset") and doc.get("passes") else "; the prefix cache kept between passes")
            + (f"; warm-up: {doc['warm_up']['schemas']} schemas compiled first" if doc.get("warm_up") else "")
            + ". req/s and output tok/s: the median pass (min-max); latencies over every request of every pass.")
    rows = [(r["served_model"], "constrained" if r["constrained"] else "unconstrained", r["concurrency"], r["requests"],
             _span(r, "request_throughput"), _span(r, "output_tok_s"), f"{r['ttft_ms']['p50']} / {r['ttft_ms']['p99']}",
             f"{r['tpot_ms']['p50']} / {r['tpot_ms']['p99']}", f"{r['itl_ms']['p50']} / {r['itl_ms']['p99']}",
             f"{r['e2e_ms']['p50']} / {r['e2e_ms']['p90']} / {r['e2e_ms']['p99']}", r["errors"]) for r in doc["results"]]
    parts = [head, md_table(["served model", "arm", "concurrency", "requests", "req/s", "output tok/s", "TTFT p50/p99 ms",
                             "TPOT p50/p99 ms", "ITL p50/p99 ms", "E2E p50/p90/p99 ms", "errors"], rows,
                            align="llrrrrrrrrr")]
    if doc["ratios"]:
        ratio_rows = [(q["kind"], q.get("served_model") or ("constrained" if q.get("constrained") else "unconstrained"),
                       q["concurrency"], q["ratio"], q.get("request_ratio", ""),
                       "-".join(str(x) for x in (min(q["paired"]), max(q["paired"]))) if q.get("paired") else "")
                      for q in doc["ratios"]]
        parts.append(md_table(["ratio", "served model / arm", "concurrency", "output tok/s ratio", "req/s ratio",
                               "paired req/s ratios (min-max)"], ratio_rows, align="llrrrl"))
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
