"""`evaluate batch`: run a dataset through an engine into a run directory (CONTRACT.md section 3).

Rows are appended and flushed chunk by chunk as samples finish; re-running into the same directory
resumes, skipping finished ids, and refuses when the provenance differs.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from schemas.artifacts import describe_path, file_sha256
from schemas.embedded import resolve_model
from schemas.errors import UserError
from schemas.output import load_schema, schema_hash
from schemas.prompt import PROMPT_VERSION, prompt_fingerprint
from schemas.records import Record, load_dataset

from .engines import AdapterSpec, Engine, GenResult
from .requests import build_requests, sampling_summary
from .rundir import RESULTS, RUN_JSON, read_results, repair_torn_tail

RUN_FORMAT_VERSION = 1
# The provenance fields that must agree for a run directory to be resumed.
RESUME_KEYS = ("base_model", "adapter", "adapter_mode", "dataset", "schema", "constrained", "backend", "prompt", "sampling")


@dataclass
class BatchConfig:
    data: str
    out: str
    constrained: bool
    model: str | None = None
    adapter: AdapterSpec | None = None
    schema_name: str = "v1"
    backend: str = "outlines"
    server: str | None = None
    limit: int | None = None
    chunk_size: int = 32
    max_model_len: int = 2048
    skip_bad: bool = False
    merged: bool = False  # the adapter merged into the base (no LoRA at decoding time)
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchSummary:
    run_dir: Path
    total: int
    done_before: int
    generated: int
    seconds: float
    output_tokens: int
    finish_reasons: dict[str, int]


def _result_row(rec: Record, res: GenResult) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": rec.id,
        "patent_id": rec.patent_id,
        "query": rec.query,
        "elements": [e.model_dump() for e in rec.elements],
        "gold": rec.label.model_dump() if rec.label is not None else None,
        "raw_output": res.raw_output,
        "finish_reason": res.finish_reason,
        "prompt_tokens": res.prompt_tokens,
        "output_tokens": res.output_tokens,
        "latency_s": res.latency_s,
    }
    if rec.meta is not None:
        row["meta"] = rec.meta
    return row


def provenance(cfg: BatchConfig, model_path: str, engine_desc: dict[str, Any], n_records: int) -> dict[str, Any]:
    model_info: dict[str, Any] = {"name": cfg.model or "embedded:SmolLM2-135M-Instruct"}
    if Path(model_path).exists():
        model_info.update(describe_path(model_path))
    adapter = None
    if cfg.adapter is not None:
        adapter = {"name": cfg.adapter.name, **describe_path(cfg.adapter.path)}
    return {
        "format_version": RUN_FORMAT_VERSION,
        "base_model": model_info,
        "adapter": adapter,
        "adapter_mode": None if adapter is None else ("merged" if cfg.merged else "lora"),
        "dataset": {"path": cfg.data, "sha256": file_sha256(cfg.data), "records": n_records, "limit": cfg.limit},
        "schema": {"name": cfg.schema_name, "hash": schema_hash(load_schema(cfg.schema_name))},
        "constrained": cfg.constrained,
        "backend": engine_desc.get("backend") if cfg.constrained else None,
        "prompt": {"version": PROMPT_VERSION, "hash": prompt_fingerprint(cfg.schema_name)},
        "engine": engine_desc,
        "sampling": sampling_summary(cfg.seed),
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = []
    for key in RESUME_KEYS:
        a, b = old.get(key), new.get(key)
        if key == "dataset":
            a, b = (a or {}).get("sha256"), (b or {}).get("sha256")
        if key == "adapter_mode" and a is None and old.get("adapter"):
            a = "lora"  # runs written before merged mode existed
        if a != b:
            diffs.append(f"{key}: {json.dumps(a, ensure_ascii=False)} -> {json.dumps(b, ensure_ascii=False)}")
    return diffs


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def finished_ids(run_dir: Path) -> set[str]:
    """Ids already in results.jsonl, after repairing a torn last line."""
    results = run_dir / RESULTS
    if not results.exists() or results.stat().st_size == 0:
        return set()
    repair_torn_tail(run_dir)
    if results.stat().st_size == 0:
        return set()
    return {r["id"] for r in read_results(run_dir).rows}


def run_batch(cfg: BatchConfig, make_engine: Callable[[str], Engine], *, log: Callable[[str], None] = print,
              progress: bool = True) -> BatchSummary:
    """Evaluate ``cfg.data`` into ``cfg.out``. ``make_engine(model_path)`` builds the engine (lazily,
    only when there is work left)."""
    data = load_dataset(cfg.data, skip_bad=cfg.skip_bad, limit=cfg.limit)
    for p in data.skipped:
        log(f"skipped: {p}")
    records = data.records
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    done = finished_ids(run_dir)
    unknown = done - {r.id for r in records}
    if unknown and cfg.limit is None:
        raise UserError(f"{run_dir / RESULTS}: holds {len(unknown)} id(s) not in {cfg.data} (e.g. {sorted(unknown)[0]!r}); "
                        "this run directory belongs to another dataset: choose another --out")
    todo = [r for r in records if r.id not in done]
    if done:
        log(f"resuming {run_dir}: {len(done & {r.id for r in records})} of {len(records)} samples already done")
    if cfg.adapter is not None:
        from train.export import check_adapter_dir

        check_adapter_dir(cfg.adapter.path)  # what vLLM would refuse is refused before any engine starts
    model_path = resolve_model(cfg.model, log)
    info_path = run_dir / RUN_JSON
    old_info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else None
    if not todo:
        log(f"{run_dir}: nothing left to do")
        return BatchSummary(run_dir, len(records), len(records), 0, 0.0, 0, {})

    engine = make_engine(model_path)
    try:
        info = provenance(cfg, model_path, engine.description, len(records))
        if old_info is not None:
            diffs = _differences(old_info, info)
            if diffs:
                raise UserError(f"{info_path}: this run directory was made with other settings; refusing to mix them "
                                f"(choose another --out, or delete it to start over):\n  " + "\n  ".join(diffs))
            info["started_at"] = old_info.get("started_at")
            info["resumed_at"] = old_info.get("resumed_at", []) + [datetime.now(timezone.utc).isoformat(timespec="seconds")]
        else:
            info["started_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        info["finished_at"] = None
        _write_json(info_path, info)

        requests = build_requests(todo, cfg.schema_name, cfg.constrained, engine.count_tokens)
        by_id = {r.id: r for r in todo}
        summary = _generate_into(run_dir / RESULTS, requests, by_id, engine, cfg.chunk_size, progress)
        info["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        info["counts"] = {"samples": len(records), "finish_reasons": _count_finish(run_dir)}
        _write_json(info_path, info)
    finally:
        engine.close()
    return BatchSummary(run_dir, len(records), len(records) - len(todo), len(todo), summary[0], summary[1],
                        info["counts"]["finish_reasons"])


def _count_finish(run_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in read_results(run_dir).rows:
        counts[r["finish_reason"]] = counts.get(r["finish_reason"], 0) + 1
    return counts


def _generate_into(results: Path, requests, by_id, engine: Engine, chunk_size: int, progress: bool) -> tuple[float, int]:
    from tqdm import tqdm

    t0 = time.perf_counter()
    tokens = 0
    bar = tqdm(total=len(requests), unit="sample", disable=not progress, dynamic_ncols=True)
    streaming = getattr(engine, "generate_iter", None)
    with open(results, "ab") as f:
        try:
            for start in range(0, len(requests), chunk_size):
                chunk = requests[start:start + chunk_size]
                # A server engine yields rows as requests finish: each is written and flushed at once, so a
                # failure later in the chunk loses none of them. The offline engine decodes the chunk together.
                for o in (streaming(chunk) if streaming else engine.generate(chunk)):
                    f.write((json.dumps(_result_row(by_id[o.record_id], o), ensure_ascii=False) + "\n").encode("utf-8"))
                    if streaming:
                        f.flush()
                    tokens += o.output_tokens
                    bar.update(1)
                f.flush()
                os.fsync(f.fileno())
                elapsed = time.perf_counter() - t0
                bar.set_postfix(tok_s=f"{tokens / elapsed:.1f}", refresh=False)
        finally:
            f.flush()
            os.fsync(f.fileno())
    bar.close()
    return time.perf_counter() - t0, tokens
