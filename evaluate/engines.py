"""Engine execution: the only place that talks to vLLM. Everything it is given was built by
evaluate.requests; everything it returns is plain data."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from schemas.errors import UserError

from .requests import GenRequest

BACKENDS = ("outlines", "xgrammar", "guidance")
LORA_INT_ID = 1


@dataclass
class GenResult:
    record_id: str
    raw_output: str
    finish_reason: str
    prompt_tokens: int
    output_tokens: int
    latency_s: float


class Engine(Protocol):
    description: dict[str, Any]

    def generate(self, requests: list[GenRequest]) -> list[GenResult]: ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: str


class VllmOffline:
    """vLLM's offline engine (`vllm.LLM`), LoRA through `LoRARequest`, one `SamplingParams` per
    record so that records with different schemas decode in one batch."""

    def __init__(self, model: str, adapter: AdapterSpec | None = None, backend: str = "outlines",
                 max_model_len: int = 2048, max_lora_rank: int = 16, dtype: str | None = None,
                 seed: int = 0, gpu_memory_utilization: float | None = None):
        if backend not in BACKENDS:
            raise UserError(f"unknown structured-outputs backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        from serve import cpu_env

        cpu_env.configure(offline=True)
        import vllm
        from vllm import LLM

        self._seed = seed
        self.adapter = adapter
        kwargs: dict[str, Any] = dict(
            model=model, dtype=dtype or cpu_env.default_dtype(), max_model_len=max_model_len, seed=seed,
            gpu_memory_utilization=gpu_memory_utilization or cpu_env.default_memory_utilization(),
            structured_outputs_config={"backend": backend},
        )
        if adapter is not None:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        self.llm = LLM(**kwargs)
        self._tokenizer = self.llm.get_tokenizer()
        self.description = {"name": "vllm", "version": vllm.__version__, "mode": "offline", "backend": backend,
                            "dtype": kwargs["dtype"], "max_model_len": max_model_len,
                            "cpu_build": cpu_env.is_cpu_build(), "env": cpu_env.configure(offline=True)}

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _lora_request(self):
        if self.adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(self.adapter.name, LORA_INT_ID, self.adapter.path)

    def sampling_params(self, req: GenRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if req.json_schema is not None:
            structured = StructuredOutputsParams(json=req.json_schema, disable_any_whitespace=True)
        return SamplingParams(temperature=0.0, max_tokens=req.max_tokens, seed=self._seed,
                              structured_outputs=structured)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        t0 = time.perf_counter()
        outputs = self.llm.chat([r.messages for r in requests], [self.sampling_params(r) for r in requests],
                                use_tqdm=False, lora_request=self._lora_request())
        elapsed = time.perf_counter() - t0
        results = []
        for req, out in zip(requests, outputs):
            comp = out.outputs[0]
            results.append(GenResult(record_id=req.record_id, raw_output=comp.text,
                                     finish_reason=str(comp.finish_reason), prompt_tokens=len(out.prompt_token_ids or []),
                                     output_tokens=len(comp.token_ids), latency_s=round(elapsed, 3)))
        return results

    def close(self) -> None:
        import gc

        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del self.llm
        gc.collect()
