"""`--engine-arg KEY=VALUE`: vLLM's own engine settings (tensor parallelism, max_num_seqs, enforce_eager, ...)
passed to the offline engine, checked before it starts.

A key must be a field of vLLM's ``EngineArgs`` (read from the installed vLLM's source, without importing it: a
misspelt key is refused with the closest names). Keys the project sets itself are refused with the flag that
owns them. A value is read as JSON (``8``, ``true``, ``0.5``, ``{"level": 0}``), else taken as a string.

Every argument given is recorded in run.json (``engine_args``). Only those that can change what the model
writes are part of the run's identity (a resume with another value is refused): everything except
``SCHEDULING_ONLY``, the settings that decide how requests are batched, where weights and cache live and how
fast it runs, not the tokens (greedy decoding, the same model and dtype).
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from patent_risk.schemas.errors import UserError

# Keys the project sets: the flag (or the reason) to use instead.
OWNED = {
    "model": "--model",
    "tokenizer": "--model (the model's own tokenizer is the one trained with)",
    "enable_lora": "--adapter",
    "structured_outputs_config": "--backend",
    "max_model_len": "--max-model-len",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "seed": "nothing: decoding is greedy with the run's recorded seed (run.json sampling)",
    "disable_log_stats": "nothing: the per-request timings in results.jsonl need vLLM's stats",
}

# Keys that cannot change the tokens a greedy run writes: batching and scheduling, parallelism, memory and
# placement, compilation, logging. Not part of a run's identity.
SCHEDULING_ONLY = frozenset({
    "max_num_seqs", "max_num_batched_tokens", "max_num_scheduled_tokens", "max_num_active_seqs",
    "max_num_queued_reqs", "max_num_queued_tokens", "long_prefill_token_threshold", "enable_chunked_prefill",
    "scheduling_policy", "async_scheduling", "stream_interval",
    "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "distributed_executor_backend",
    "max_parallel_loading_workers",
    "kv_cache_memory_bytes", "num_gpu_blocks_override", "block_size", "swap_space", "cpu_offload_gb",
    "enable_prefix_caching", "enable_sleep_mode",
    "enforce_eager", "compilation_config", "cudagraph_capture_sizes", "max_cudagraph_capture_size",
    "max_lora_rank", "max_loras", "max_cpu_loras", "fully_sharded_loras",
    "download_dir", "use_tqdm_on_load", "aggregate_engine_logging", "log_level", "otlp_traces_endpoint",
    "shutdown_timeout",
})


@lru_cache(maxsize=1)
def engine_arg_names() -> tuple[str, ...]:
    """The fields of the installed vLLM's ``EngineArgs`` dataclass, read from its source."""
    spec = importlib.util.find_spec("vllm.engine.arg_utils")
    if spec is None or spec.origin is None:
        raise UserError("--engine-arg needs vLLM installed (vllm.engine.arg_utils not found)")
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "EngineArgs":
            return tuple(s.target.id for s in node.body
                         if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and not s.target.id.startswith("_"))
    raise UserError(f"{spec.origin}: no EngineArgs class; this vLLM is not one --engine-arg knows")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_engine_args(pairs: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (dashes or underscores) as EngineArgs keyword arguments, every key checked."""
    out: dict[str, Any] = {}
    names = engine_arg_names()
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise UserError(f"--engine-arg {pair!r}: expected KEY=VALUE, e.g. --engine-arg max_num_seqs=8")
        if key in OWNED:
            raise UserError(f"--engine-arg {key}: set by this project; use {OWNED[key]}")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else " (see `vllm serve --help` for vLLM's engine arguments)"
            raise UserError(f"--engine-arg {key}: not an argument of vLLM's EngineArgs{hint}")
        if key in out:
            raise UserError(f"--engine-arg {key}: given twice")
        out[key] = _value(text)
    return out


def output_changing(args: dict[str, Any] | None) -> dict[str, Any]:
    """The part of recorded engine arguments that belongs to a run's identity."""
    return {k: v for k, v in sorted((args or {}).items()) if k not in SCHEDULING_ONLY}


def adapters_lora_rank(adapter_dirs: Iterable[str | Path], args: dict[str, Any] | None = None) -> int:
    """``lora_rank`` of the adapters in ``adapter_dirs`` (their adapter_config.json's r; unreadable ones left to
    check_adapter_dir)."""
    from .adapters import adapter_rank

    return lora_rank([r for r in map(adapter_rank, adapter_dirs) if r is not None], args)


def lora_rank(adapter_ranks: Iterable[int], args: dict[str, Any] | None) -> int:
    """The engine's max_lora_rank: ``--engine-arg max_lora_rank=N`` when given, else the largest adapter rank."""
    given = (args or {}).get("max_lora_rank")
    if given is not None:
        if not isinstance(given, int) or isinstance(given, bool):
            raise UserError(f"--engine-arg max_lora_rank={given!r}: expected an integer")
        return given
    return max(list(adapter_ranks) or [16])
