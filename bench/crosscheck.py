"""Cross-check `patent-risk serve bench` against vLLM's own serving benchmark (`vllm.benchmarks.serve`, the code
behind `vllm bench serve`, whose console script is broken on the CPU build) on one configuration.

Both benchmarks send the same requests to the same running server: the dataset's prompts rendered
with the model's chat template, greedy, the same max_tokens per prompt, the same concurrency, no
constraint (vLLM's benchmark cannot attach a different JSON schema to each request). vLLM's goes
through `/v1/completions` with the pre-rendered text (`--skip-chat-template`), ours through
`/v1/chat/completions`; the tokenizer adds no special tokens, so the prompt tokens are the same.
"""
from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any, Callable

METRICS = ("ttft", "tpot", "itl", "e2el")


def _vllm_args(url: str, served_model: str, tokenizer_model: str, dataset: Path, n: int, concurrency: int,
               result_dir: Path, api_key: str | None) -> list[str]:
    args = ["--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
            "--model", served_model, "--tokenizer", tokenizer_model,
            "--dataset-name", "custom", "--dataset-path", str(dataset), "--skip-chat-template",
            "--custom-output-len", "-1", "--num-prompts", str(n), "--max-concurrency", str(concurrency),
            "--request-rate", "inf", "--temperature", "0", "--seed", "0", "--disable-tqdm",
            "--percentile-metrics", ",".join(METRICS), "--metric-percentiles", "50,90,99",
            "--save-result", "--result-dir", str(result_dir), "--result-filename", "vllm_bench.json"]
    if api_key:
        args += ["--header", f"Authorization=Bearer {api_key}"]
    return args


def run_vllm_bench(argv: list[str]) -> dict[str, Any]:
    """vLLM's serving benchmark, in-process, with its own argument parser."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    return main(parser.parse_args(argv))


def _from_vllm(res: dict[str, Any]) -> dict[str, Any]:
    def pcts(metric):
        return {f"p{p}": round(float(res[f"p{p}_{metric}_ms"]), 2) for p in (50, 90, 99)}

    return {"requests": res["completed"] + res.get("failed", 0), "errors": res.get("failed", 0),
            "wall_s": round(float(res["duration"]), 3), "request_throughput": round(float(res["request_throughput"]), 4),
            "output_tok_s": round(float(res["output_throughput"]), 2), "output_tokens": int(res["total_output_tokens"]),
            "ttft_ms": pcts("ttft"), "tpot_ms": pcts("tpot"), "itl_ms": pcts("itl"), "e2e_ms": pcts("e2el")}


def crosscheck(url: str, served_model: str, data: str, concurrency: int, num_requests: int, tokenizer_model: str,
               schema_name: str = "v1", api_key: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    from .serving import _run_level, prompt_requests, summarize

    tok, by_arm = prompt_requests(data, num_requests, tokenizer_model, schema_name, [False])
    reqs = by_arm[False]
    # The completions endpoint adds the tokenizer's special tokens itself: a BOS the chat template
    # writes as text would otherwise be doubled.
    adds_bos = tok.bos_token_id is not None and tok("x")["input_ids"][:1] == [tok.bos_token_id]
    with tempfile.TemporaryDirectory(prefix="crosscheck-") as tmp:
        dataset = Path(tmp) / "prompts.jsonl"
        with dataset.open("w", encoding="utf-8") as f:
            for r in reqs:
                text = tok.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False)
                if adds_bos and text.startswith(tok.bos_token):
                    text = text[len(tok.bos_token):]
                f.write(json.dumps({"prompt": text, "output_tokens": r.max_tokens}, ensure_ascii=False) + "\n")
        # A cold server (first LoRA load, first batch shapes) would penalise whichever benchmark ran first.
        log(f"warm-up: {served_model}, {num_requests} requests, concurrency {concurrency} (not recorded)")
        asyncio.run(_run_level(url, api_key, served_model, reqs, concurrency, 0))
        log(f"vLLM's serving benchmark: {served_model}, {num_requests} requests, concurrency {concurrency}")
        raw = run_vllm_bench(_vllm_args(url, served_model, tokenizer_model, dataset, num_requests, concurrency,
                                        Path(tmp), api_key))
    log(f"serve bench: {served_model}, {num_requests} requests, concurrency {concurrency}")
    stats, wall = asyncio.run(_run_level(url, api_key, served_model, reqs, concurrency, 0))
    ours = summarize(stats, wall)
    theirs = _from_vllm(raw)
    compare = {}
    for key in ("output_tok_s", "request_throughput", "output_tokens"):
        compare[key] = round(ours[key] / theirs[key], 3) if theirs[key] else None
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        for p in ("p50", "p99"):
            a, b = ours[key][p], theirs[key][p]
            compare[f"{key}_{p}"] = round(a / b, 3) if a is not None and b else None
    return {"url": url, "served_model": served_model, "data": data, "num_requests": num_requests,
            "concurrency": concurrency, "constrained": False,
            "order": ["warm-up (serve bench, not recorded)", "vllm bench serve", "serve bench"], "serve_bench": ours, "vllm_bench": theirs,
            "ratio_serve_bench_over_vllm": compare}


def to_markdown(doc: dict[str, Any]) -> str:
    a, b, q = doc["serve_bench"], doc["vllm_bench"], doc["ratio_serve_bench_over_vllm"]
    rows = [("output tok/s", a["output_tok_s"], b["output_tok_s"], q["output_tok_s"]),
            ("requests/s", a["request_throughput"], b["request_throughput"], q["request_throughput"]),
            ("output tokens", a["output_tokens"], b["output_tokens"], q["output_tokens"])]
    for key, name in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E")):
        for p in ("p50", "p99"):
            rows.append((f"{name} {p} ms", a[key][p], b[key][p], q[f"{key}_{p}"]))
    rows.append(("errors", a["errors"], b["errors"], ""))
    from patent_risk.evaluate.report_doc import md_table

    return (f"{doc['served_model']}, unconstrained, concurrency {doc['concurrency']}, {doc['num_requests']} requests\n\n"
            + md_table(["metric", "serve bench", "vllm bench serve", "ratio"], rows, align="lrrr") + "\n")
