"""`evaluate batch`: run a dataset through an engine into a run directory (docs/formats.md section 3).

Rows are appended and flushed chunk by chunk as samples finish; re-running into the same directory
resumes, skipping finished ids, and refuses when the provenance differs.
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from functools import lru_cache
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from patent_risk.runtime.artifacts import atomic_write_text, describe_path, file_sha256
from patent_risk.runtime.embedded import default_model_label, resolve_model
from patent_risk.runtime.engine_log import ENGINE_LOG, engine_output
from patent_risk.runtime import engine_death, machine
from patent_risk.runtime.engine_death import EngineDied
from patent_risk.runtime.engines import AdapterSpec, Engine, EngineFailure, GenResult
from patent_risk.runtime.requests import build_requests, max_tokens_summary, sampling_summary
from patent_risk.schemas.errors import UserError
from patent_risk.schemas.output import load_schema, schema_hash
from patent_risk.schemas.prompt import BUILTIN, Prompt, check_renders, load_prompt_template, prompt_from_record
from patent_risk.schemas.records import Record, load_dataset

from .provenance import resume_differences
from .rundir import RESULTS, RUN_JSON, read_info, read_results, repair_torn_tail

RUN_FORMAT_VERSION = 3  # 2: identity keyed on content (evaluate.provenance), structured_outputs, max_tokens;
# 3: structured_outputs_config (the offline engine's config, part of the identity)
LOCK = ".lock"

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
    engine_args: dict[str, Any] = field(default_factory=dict)  # --engine-arg, checked (runtime.engine_args)
    allow_other_base: bool = False  # decode the adapter on a --model that is not its base, on purpose
    prompt_template: str | None = None  # --prompt-template FILE; None: the adapter's recorded prompt, else p1
    prompt: Prompt | None = None  # what renders the records (settle_prompt), the same for both arms
    label_probs: bool = True  # each decision's label probabilities in every row
    base_settled: bool = field(default=False, repr=False)  # settle_base has run


@dataclass
class BatchSummary:
    run_dir: Path
    total: int
    done_before: int
    generated: int
    seconds: float
    output_tokens: int
    finish_reasons: dict[str, int]
    compile_s: float = 0.0  # of ``seconds``: compiling the run's new outlines schemas (not decoding)


def result_row(rec: Record, res: GenResult) -> dict[str, Any]:
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
    if res.ttft_s is not None:
        row["ttft_s"] = res.ttft_s
    if res.cached_tokens is not None:
        row["cached_tokens"] = res.cached_tokens  # prompt tokens the prefix cache served
    if res.label_probs is not None:
        row["label_probs"] = res.label_probs
    if rec.meta is not None:
        row["meta"] = rec.meta
    return row


def engine_identity(cfg: BatchConfig) -> dict[str, Any]:
    """The engine part of a run's identity, known without starting one: vLLM's installed version offline,
    the server's own /version through a server."""
    from patent_risk.runtime.engines import server_version, vllm_version

    if cfg.server:
        version = server_version(cfg.server)
        if version == "unknown":
            import urllib.error
            import urllib.request

            try:
                urllib.request.urlopen(f"{cfg.server.rstrip('/')}/health", timeout=10).close()
            except (urllib.error.URLError, OSError) as e:
                raise UserError(f"no vLLM server answers at {cfg.server} ({e}); start one with `patent-risk serve start`") from None
        return {"name": "vllm", "version": version, "mode": "server"}
    return {"name": "vllm", "version": vllm_version(), "mode": "offline"}


def provenance(cfg: BatchConfig, model_path: str, engine_desc: dict[str, Any], n_records: int) -> dict[str, Any]:
    """run.json's content before generation: every identity field (evaluate.provenance) and what describes
    this invocation. ``engine_desc`` holds at least the engine's name, version and mode."""
    from patent_risk.runtime import cpu_env
    from patent_risk.runtime.requests import STRUCTURED_OUTPUT_OPTIONS

    from patent_risk.runtime.hub import cached_folder, is_hub_id

    model_info: dict[str, Any] = {"name": default_model_label(cfg.model)}
    folder = cached_folder(model_path) if is_hub_id(model_path) else model_path  # a hub id: by its cached content
    if folder is not None and Path(folder).exists():
        model_info.update(describe_path(folder))
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
        "backend": cfg.backend if cfg.constrained else None,
        "structured_outputs": dict(STRUCTURED_OUTPUT_OPTIONS) if cfg.constrained else None,
        "structured_outputs_config": (cpu_env.structured_outputs_config(cfg.backend)
                                      if cfg.constrained and not cfg.server else None),
        "prompt": (cfg.prompt or BUILTIN).describe(cfg.schema_name),
        "engine": engine_desc,
        "engine_args": dict(cfg.engine_args),
        "sampling": sampling_summary(cfg.seed),
        "label_probs": reads_label_probs(cfg, model_path),
    }


def reads_label_probs(cfg: BatchConfig, model_path: str) -> bool:
    """Whether this run's rows carry label probabilities: asked for, and the model's tokenizer starts each label of
    a field with its own token (label_probs_unreadable). Through --server, a server that refuses or ignores vLLM's
    logprob_token_ids still gives rows, each saying so (runtime.engines.VllmServer)."""
    return cfg.label_probs and label_probs_unreadable(model_path) is None


@lru_cache(maxsize=8)
def label_probs_unreadable(model_path: str) -> str | None:
    """Why ``model_path``'s tokenizer cannot give label probabilities (None: it can): runtime.label_probs reads a
    label's first token, so a tokenizer that starts two labels of a field with the same token (a byte-level BPE
    on Korean: SmolLM2 starts 높음 and 낮음 with 'ë') cannot tell them apart there."""
    from transformers import AutoTokenizer

    from patent_risk.runtime.label_probs import first_token_ids

    try:
        tok = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as e:  # the engine would say more; here only the label probabilities are at stake
        return f"its tokenizer could not be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    try:
        first_token_ids(lambda text: tok(text, add_special_tokens=False)["input_ids"])
    except ValueError as e:
        return str(e)
    return None


def write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the whole invocation: a second writer exits at once.

    ``flock`` on ``RUN_DIR/.lock`` (the holder's pid written inside, for the message): the kernel releases
    it when the holder dies, however it dies, so a killed run never keeps its directory locked."""
    import fcntl

    path = run_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise UserError(f"{run_dir}: another `evaluate batch` (pid {holder}) is writing into this run directory; "
                            "wait for it to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def check_resumable(cfg: BatchConfig, model_path: str, n_records: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """This invocation's run.json content and the directory's existing one; raises UserError, naming every
    differing identity field, when the directory holds a run made with other settings. Needs no engine."""
    info = provenance(cfg, model_path, engine_identity(cfg), n_records)
    info_path = Path(cfg.out) / RUN_JSON
    old = read_info(cfg.out)
    refuse_other_settings(info_path, [] if old is None else resume_differences(old, info))
    return info, old


def refuse_other_settings(info_path: Path, diffs: list[str]) -> None:
    """The refusal of a run directory made with other settings, naming every differing field (none: no-op)."""
    if diffs:
        raise UserError(f"{info_path}: this run directory was made with other settings; refusing to mix them "
                        f"(choose another --out, or delete it to start over):\n  " + "\n  ".join(diffs))


def stale_differences(cfg: BatchConfig, log: Callable[[str], None] = print) -> list[str]:
    """What makes ``cfg.out`` another run than ``cfg`` would make (empty when it would resume, or when
    there is no run yet); for callers such as `make demo` that own their run directories."""
    if read_info(cfg.out) is None:
        return []
    settle_base(cfg, log)
    n = len(load_dataset(cfg.data, skip_bad=cfg.skip_bad, limit=cfg.limit).records)
    info = provenance(cfg, resolve_model(cfg.model, log), engine_identity(cfg), n)
    return resume_differences(read_info(cfg.out) or {}, info)


def _compiled_seconds(engine: Engine) -> float:
    """Seconds the engine has spent compiling outlines schemas ahead of generation (0 for engines that do not)."""
    return float((getattr(engine, "precompiled", None) or {}).get("seconds", 0.0))


def adapter_schema(adapter_dir: str | Path) -> str | None:
    """The output schema an adapter was trained to write, from the manifest `patent-risk train qlora` writes (None: no
    manifest, or it does not say)."""
    from patent_risk.runtime.adapters import read_manifest

    schema = (read_manifest(Path(adapter_dir)) or {}).get("schema")
    return schema.get("name") if isinstance(schema, dict) and isinstance(schema.get("name"), str) else None


def default_schema(given: str | None, adapter_dirs: list[str | Path]) -> str:
    """The output schema to decode and score: ``given``, else the one the adapters were trained to write (their
    manifests; they must agree), else v1."""
    if given:
        return given
    found: dict[str, list[str]] = {}
    for d in adapter_dirs:
        found.setdefault(adapter_schema(d) or "v1", []).append(str(d))
    if len(found) > 1:
        listing = "; ".join(f"{', '.join(ds)}: {name}" for name, ds in found.items())
        raise UserError(f"the adapters were trained to write different output schemas ({listing}): give one with --schema")
    return next(iter(found), "v1")


def adapter_prompt(adapter_dir: str | Path, log: Callable[[str], None] = print) -> Prompt:
    """The prompt the adapter's manifest records it was trained with (its template), else the built-in prompt."""
    from patent_risk.runtime.adapters import read_manifest

    source = str(Path(adapter_dir) / "manifest.json")
    recorded = (read_manifest(Path(adapter_dir)) or {}).get("prompt")
    prompt = prompt_from_record(recorded, source)
    if prompt is None and recorded is not None:
        log(f"warning: {source} records prompt {recorded.get('version') if isinstance(recorded, dict) else recorded!r}, "
            f"which this version does not have and whose template it does not hold; using the built-in prompt "
            f"({BUILTIN.version}); give the template with --prompt-template FILE")
    return prompt or BUILTIN


def resolve_prompt(prompt_template: str | None, adapter_dir: str | Path | None, schema_name: str,
                   log: Callable[[str], None] = print) -> Prompt:
    """The prompt to render records with: ``prompt_template``'s (noted when the adapter was trained with another),
    else the one the adapter's manifest records it was trained with, else the built-in prompt."""
    if prompt_template:
        prompt = load_prompt_template(prompt_template)
        trained = None if adapter_dir is None else adapter_prompt(adapter_dir, log)
        if trained is not None and trained.fingerprint(schema_name) != prompt.fingerprint(schema_name):
            log(f"note: {adapter_dir} was trained with another prompt ({trained.source or 'built-in ' + trained.version}, "
                f"hash {trained.fingerprint(schema_name)}); evaluating with {prompt.source}, as asked")
    else:
        prompt = BUILTIN if adapter_dir is None else adapter_prompt(adapter_dir, log)
    if not prompt.builtin:
        log(f"prompt: {prompt.source} (hash {prompt.fingerprint(schema_name)})")
    return prompt


def settle_prompt(cfg: BatchConfig, log: Callable[[str], None] = print) -> None:
    """Set ``cfg.prompt`` (resolve_prompt) once per config."""
    if cfg.prompt is None:
        cfg.prompt = resolve_prompt(cfg.prompt_template, None if cfg.adapter is None else cfg.adapter.path,
                                    cfg.schema_name, log)


def settle_base(cfg: BatchConfig, log: Callable[[str], None] = print) -> None:
    """Set ``cfg.model`` to the adapter's recorded base when none was given, and refuse a given one that is not
    that base nor made from it (runtime.bases), before any engine starts; and settle the prompt. Once per config."""
    settle_prompt(cfg, log)
    if cfg.base_settled or cfg.adapter is None:
        return
    from patent_risk.runtime.bases import settle_model

    cfg.model = settle_model(cfg.model, [cfg.adapter.path], allow_other_base=cfg.allow_other_base, log=log)
    cfg.base_settled = True


def max_lora_rank(cfg: BatchConfig) -> int:
    """The engine's max_lora_rank for ``cfg``: ``--engine-arg max_lora_rank`` when given, else the adapter's r."""
    from patent_risk.runtime.engine_args import adapters_lora_rank

    return adapters_lora_rank([] if cfg.adapter is None else [cfg.adapter.path], cfg.engine_args)


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
              progress: bool = True, quiet: bool = False) -> BatchSummary:
    """Evaluate ``cfg.data`` into ``cfg.out``. The run directory is locked for the whole call; its
    provenance is checked (evaluate.provenance) before ``make_engine(model_path)`` builds the engine,
    which happens only when there is work left. ``quiet``: the engine's own output (vLLM's log, from its
    start to its close) goes to RUN_DIR/engine.log instead of the terminal (runtime.engine_log)."""
    data = load_dataset(cfg.data, skip_bad=cfg.skip_bad, limit=cfg.limit)
    for line in data.skipped_lines():
        log(f"skipped: {line}")
    records = data.records
    settle_base(cfg, log)
    check_renders(cfg.prompt, records, cfg.schema_name)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        return _run_locked(cfg, records, run_dir, make_engine, log, progress, quiet)


def _run_locked(cfg: BatchConfig, records: list[Record], run_dir: Path, make_engine: Callable[[str], Engine],
                log: Callable[[str], None], progress: bool, quiet: bool) -> BatchSummary:
    done = finished_ids(run_dir)
    unknown = done - {r.id for r in records}
    if unknown and cfg.limit is None:
        raise UserError(f"{run_dir / RESULTS}: holds {len(unknown)} id(s) not in {cfg.data} (e.g. {sorted(unknown)[0]!r}); "
                        "this run directory belongs to another dataset: choose another --out")
    if cfg.adapter is not None:
        from patent_risk.runtime.adapters import check_adapter_dir

        check_adapter_dir(cfg.adapter.path, max_lora_rank(cfg))  # what vLLM would refuse, before any engine starts
        trained = adapter_schema(cfg.adapter.path)
        if trained is not None and trained != cfg.schema_name:
            log(f"warning: {cfg.adapter.path} was trained to write schema {trained} (its manifest.json), and this run "
                f"decodes and scores schema {cfg.schema_name}; pass --schema {trained} to evaluate what it learnt")
    model_path = resolve_model(cfg.model, log)
    info, old_info = check_resumable(cfg, model_path, len(records))
    if cfg.label_probs and not info["label_probs"]:
        log(f"note: no label probabilities for this model: {label_probs_unreadable(model_path)}")
    todo = [r for r in records if r.id not in done]
    if done:
        log(f"resuming {run_dir}: {len(done & {r.id for r in records})} of {len(records)} samples already done")
    if not todo:
        log(f"{run_dir}: nothing left to do (its run.json matches these settings)")
        return BatchSummary(run_dir, len(records), len(records), 0, 0.0, 0, {})

    with engine_output(run_dir / ENGINE_LOG if quiet else None):
        try:
            engine = make_engine(model_path)
        except EngineDied as e:  # at start-up: nothing written by this invocation
            raise engine_death.with_log(e, run_dir / ENGINE_LOG, len(done), len(records)) from None
        return _run_engine(cfg, records, todo, run_dir, engine, model_path, info, old_info, progress)


def _run_engine(cfg: BatchConfig, records: list[Record], todo: list[Record], run_dir: Path, engine: Engine,
                model_path: str, info: dict, old_info: dict | None, progress: bool) -> BatchSummary:
    info_path = run_dir / RUN_JSON
    try:
        identity_before = dict(info["engine"])
        info["engine"] = {**engine.description, **identity_before}
        if engine.description.get("version") not in (None, identity_before["version"]):
            raise UserError(f"the engine reports version {engine.description['version']!r}, expected "
                            f"{identity_before['version']!r}; refusing to record a run under the wrong version")
        if old_info is not None:
            info["started_at"] = old_info.get("started_at")
            info["resumed_at"] = old_info.get("resumed_at", []) + [_now()]
        else:
            info["started_at"] = _now()
        info["finished_at"] = None
        requests = build_requests(records, cfg.schema_name, cfg.constrained, engine.count_tokens, cfg.prompt,
                                  label_probs=info["label_probs"])
        info["max_tokens"] = max_tokens_summary(requests)
        write_json(info_path, info)

        todo_ids = {r.id for r in todo}
        requests = [r for r in requests if r.record_id in todo_ids]
        by_id = {r.id: r for r in todo}
        prefix_cache = _empty_prefix_cache(engine)
        grammar_before = dict(getattr(engine, "precompiled", None) or {})
        compiled_before = _compiled_seconds(engine)
        try:
            totals = _generate_into(run_dir / RESULTS, requests, by_id, engine, cfg.chunk_size, progress)
        except EngineDied as e:  # the rows written so far stay; the lock is released on the way out
            raise engine_death.with_log(e, run_dir / ENGINE_LOG, len(finished_ids(run_dir)), len(records)) from None
        info["finished_at"] = _now()
        info["generation_s"] = round(totals.seconds + float(old_info.get("generation_s", 0.0) if old_info else 0.0), 3)
        # of which: compiling this run's new outlines schemas before their chunk was submitted (once per schema;
        # a later run finds them in the disk cache). Engines that compile nothing here record 0.
        compiled = _compiled_seconds(engine) - compiled_before
        info["precompile_s"] = round(compiled + float(old_info.get("precompile_s", 0.0) if old_info else 0.0), 3)
        info["counts"] = {"samples": len(records), "finish_reasons": _count_finish(run_dir)}
        info["conditions"] = list(old_info.get("conditions", []) if old_info else []) + [{
            "samples": len(todo), "machine": machine.describe(), "mode": engine.description.get("mode"),
            "shared_with": getattr(engine, "shared_with", None), "prefix_cache": prefix_cache,
            "prompt_tokens": totals.prompt_tokens, "cached_prompt_tokens": totals.cached_tokens,
            "grammar_cache": _grammar_cache(engine, grammar_before, cfg.constrained),
            "chunk_size": cfg.chunk_size, "max_num_seqs": getattr(engine, "max_num_seqs", None),
            "max_concurrency": getattr(engine, "max_concurrency", None), "label_probs": bool(info["label_probs"])}]
        write_json(info_path, info)
    finally:
        engine.close()
    return BatchSummary(run_dir, len(records), len(records) - len(todo), len(todo), totals.seconds, totals.output_tokens,
                        info["counts"]["finish_reasons"], compile_s=compiled)


def _empty_prefix_cache(engine: Engine) -> str:
    """The prefix cache's state as this run begins, emptied where it may hold earlier prompts: an engine that has
    served requests (lent by an earlier run, ``Borrowed.shared_with``, or reused by a caller) or a server (which
    anyone's requests may have filled) is reset (vLLM's reset_prefix_cache; a server through its development
    endpoint). "empty (a fresh engine)", "reset", or "not reset: why" (then the rows' cached_tokens say what the
    cache served)."""
    from patent_risk.evaluate.conditions import EMPTY_STATES

    server = engine.description.get("mode") == "server"
    if not server and getattr(engine, "shared_with", None) is None and not getattr(engine, "requests_since_reset", 1):
        return EMPTY_STATES[0]
    reset = getattr(engine, "reset_prefix_cache", None)
    return reset() if callable(reset) else "not reset: the engine has no reset_prefix_cache"


def _grammar_cache(engine: Engine, before: dict[str, Any], constrained: bool) -> str | None:
    """Whether this run's schemas' outlines indexes were in the disk cache when the run needed them: "warm" (all),
    "cold" (none: compiled by this run, precompile_s), "partly cold"; None for an unconstrained run. Other backends
    (and a server) compile inside vLLM on a schema's first request, within the run's time."""
    if not constrained:
        return None
    backend = engine.description.get("backend")
    after = getattr(engine, "precompiled", None) or {}
    schemas = int(after.get("schemas", 0) - before.get("schemas", 0))
    if engine.description.get("mode") == "server" or backend != "outlines" or not schemas:
        return f"compiled inside vLLM ({backend})"
    found = int(after.get("found_cached", 0) - before.get("found_cached", 0))
    return "warm" if found == schemas else "cold" if found == 0 else "partly cold"


ARM_ORDER = ("constrained", "unconstrained")


def arm_dirs(out: str) -> dict[str, str]:
    """``--both --out OUT``: the two arms' run directories, OUT-constrained and OUT-unconstrained."""
    return {arm: f"{out}-{arm}" for arm in ARM_ORDER}


class _SharedEngine:
    """One engine for several runs: started by the first run that needs it, closed by ``close_all``. Each later run
    borrows it with the run before it named (``Borrowed.shared_with``), so that its prefix cache is emptied first."""

    def __init__(self, make_engine: Callable[[str], Engine]):
        self._make, self.engine, self.started_in, self.last_run = make_engine, None, None, None

    def factory(self, run_dir: Path) -> Callable[[str], Engine]:
        def make(model_path: str) -> Engine:
            if self.engine is None:
                self.engine, self.started_in = self._make(model_path), run_dir
            elif self.started_in is not None:
                print(f"this run shares the engine started for {self.started_in}: the engine's own log is "
                      f"{self.started_in / ENGINE_LOG}", file=sys.__stdout__, flush=True)  # into this run's engine.log
            lent = Borrowed(self.engine, shared_with=None if self.last_run is None else str(self.last_run))
            self.last_run = run_dir
            return lent
        return make

    def close_all(self, quiet: bool) -> None:
        if self.engine is not None:
            with engine_output(self.started_in / ENGINE_LOG if quiet else None):
                self.engine.close()


class Borrowed:
    """An engine lent to one run (run_batch closes what make_engine gives it): everything but ``close``, which
    its owner does. ``shared_with``: the run that used it before this one (None: none did), whose prompts may
    still be in its prefix cache."""

    def __init__(self, engine: Engine, shared_with: str | None = None):
        self._engine = engine
        self.shared_with = shared_with

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def close(self) -> None:
        pass


def run_both_arms(cfg: BatchConfig, make_engine: Callable[[str], Engine], *, log: Callable[[str], None] = print,
                  progress: bool = True, quiet: bool = False) -> list[BatchSummary]:
    """Both arms of ``cfg`` (its ``constrained`` is ignored) into OUT-constrained and OUT-unconstrained, on one
    engine (one start instead of two): the constrained arm first, then the unconstrained one. The engine's own
    log is in the engine.log of the arm that started it (the first with work left); the other's says so.
    Each is an ordinary run directory (locked, resumed, checked); both are checked before the engine starts, so
    that the second is not refused after the first has run."""
    from dataclasses import replace

    settle_base(cfg, log)
    cfgs = [replace(cfg, constrained=(arm == "constrained"), out=d) for arm, d in arm_dirs(cfg.out).items()]
    for c in cfgs:
        refuse_other_settings(Path(c.out) / RUN_JSON, stale_differences(c, log=lambda s: None))
    shared = _SharedEngine(make_engine)
    try:
        summaries = []
        for c in cfgs:
            log(f"{'constrained' if c.constrained else 'unconstrained'} arm: {c.out}")
            summaries.append(run_batch(c, shared.factory(Path(c.out)), log=log, progress=progress, quiet=quiet))
        return summaries
    finally:
        shared.close_all(quiet)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _count_finish(run_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in read_results(run_dir).rows:
        counts[r["finish_reason"]] = counts.get(r["finish_reason"], 0) + 1
    return counts


@dataclass
class _Totals:
    seconds: float
    output_tokens: int
    prompt_tokens: int
    cached_tokens: int | None  # None: the engine did not say for some row


def _generate_into(results: Path, requests, by_id, engine: Engine, chunk_size: int, progress: bool) -> _Totals:
    """Decode ``requests`` chunk by chunk into ``results``. An engine with ``generate_iter`` (both of this project's)
    yields each row as its request finishes: it is written and flushed at once, so that a failure or an engine's
    death loses only the requests still in flight and the file is valid JSONL at every moment. Another engine's
    chunk is written when it has finished."""
    from patent_risk.runtime.progress import progress_bar

    t0 = time.perf_counter()
    tokens = prompt = 0
    cached: int | None = 0
    bar = progress_bar(len(requests), unit="sample", desc=results.parent.name, enabled=progress)
    streaming = getattr(engine, "generate_iter", None)
    with open(results, "ab") as f:
        try:
            for start in range(0, len(requests), chunk_size):
                chunk = requests[start:start + chunk_size]
                failure = None
                try:
                    outs = streaming(chunk) if streaming else engine.generate(chunk)
                except EngineFailure as e:  # requests that failed inside the engine are never rows
                    outs, failure = e.kept, e
                for o in outs:  # a generator raises EngineFailure or EngineDied after its last row
                    f.write((json.dumps(result_row(by_id[o.record_id], o), ensure_ascii=False) + "\n").encode("utf-8"))
                    f.flush()
                    tokens += o.output_tokens
                    prompt += o.prompt_tokens
                    cached = None if cached is None or o.cached_tokens is None else cached + o.cached_tokens
                    bar.update(1)
                    bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - t0):.1f}", refresh=False)
                if failure is not None:
                    raise failure
                os.fsync(f.fileno())
        finally:
            f.flush()
            os.fsync(f.fileno())
    bar.close()
    return _Totals(time.perf_counter() - t0, tokens, prompt, cached)
