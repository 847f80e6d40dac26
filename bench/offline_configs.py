"""The configurations `evaluate bench` runs (engine, adapter mode, structured-outputs backend), what each one's
compile time covers, and the options of a run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from patent_risk.schemas.errors import UserError

PREPARE = "prepare"


@dataclass(frozen=True)
class BenchConfig:
    """One configuration: which engine, how the adapter is applied, which constraint."""

    name: str
    engine: str  # "hf" | "vllm"
    adapter_mode: str  # "peft" | "lora" | "merged"
    constrained: bool
    backend: str | None  # structured-outputs backend (None: unconstrained)
    description: str
    eager: bool = False  # vLLM without torch.compile, as vLLM's CPU build runs every LoRA engine
    label_probs: bool = False  # each decision's label probabilities read (runtime.label_probs): their cost


CONFIGS: dict[str, BenchConfig] = {c.name: c for c in (
    BenchConfig("hf", "hf", "peft", False, None,
                "HF transformers generate + PEFT adapter, batched (left padding), greedy, unconstrained"),
    BenchConfig("hf-outlines", "hf", "peft", True, "llguidance",
                "HF transformers + PEFT + outlines JSON-schema logits processor (llguidance backend), one record at a time"),
    BenchConfig("vllm", "vllm", "lora", False, None, "vLLM offline, adapter as a LoRA module, unconstrained"),
    BenchConfig("vllm-outlines", "vllm", "lora", True, "outlines",
                "vLLM offline, adapter as LoRA, structured outputs with the outlines (outlines-core) backend"),
    BenchConfig("vllm-xgrammar", "vllm", "lora", True, "xgrammar",
                "vLLM offline, adapter as LoRA, structured outputs with the xgrammar backend"),
    BenchConfig("vllm-guidance", "vllm", "lora", True, "guidance",
                "vLLM offline, adapter as LoRA, structured outputs with the guidance (llguidance) backend"),
    BenchConfig("vllm-probs", "vllm", "lora", False, None,
                "vLLM offline, adapter as LoRA, unconstrained, with label probabilities (the cost of reading them)",
                label_probs=True),
    BenchConfig("vllm-outlines-probs", "vllm", "lora", True, "outlines",
                "vLLM offline, adapter as LoRA, outlines backend, with label probabilities (the cost of reading them)",
                label_probs=True),
    BenchConfig("merged", "vllm", "merged", False, None, "vLLM offline, adapter merged into the base (no LoRA), unconstrained"),
    BenchConfig("merged-outlines", "vllm", "merged", True, "outlines",
                "vLLM offline, adapter merged into the base (no LoRA), structured outputs with the outlines backend"),
    BenchConfig("merged-eager", "vllm", "merged", False, None,
                "vLLM offline, adapter merged, unconstrained, torch.compile off (vLLM's CPU build turns it off for "
                "LoRA engines): separates the compile gain from the LoRA cost", eager=True),
)}


# every configuration but the label-probability ones (ask for those by name: their cost against their twins)
DEFAULT_CONFIGS = tuple(name for name, c in CONFIGS.items() if not c.label_probs)


# What `compile_s` means, per kind of run (written into the output).
COMPILE_WHAT = {
    "hf": ("summed time to build the per-record outlines logits processors "
           "(outlines LLGuidanceBackend.get_json_schema_logits_processor); llguidance builds each matcher lazily at "
           "the first generated token, so matcher construction is inside gen_s; compile_setup_s is the one-time "
           "LLGuidanceBackend(model) (llguidance tokenizer from the HF tokenizer); engine_info."
           "llguidance_matcher_compile_s is llguidance's own compile of the distinct grammars (LLMatcher), timed "
           "apart for comparison with vllm-guidance"),
    "vllm": ("time to compile the sample's distinct schemas with the backend's own library, through vLLM's own "
             "backend class and the engine's config (outlines: outlines_core.Index via OutlinesBackend; xgrammar: "
             "GrammarCompiler.compile_json_schema via XgrammarBackend; guidance: llguidance.LLMatcher via "
             "GuidanceBackend), in the worker's front-end process before generation; the engine core compiles again "
             "during generation (that time is inside gen_s); compile_setup_s is the backend's construction "
             "(vocabulary / tokenizer info). compile_s_per_schema: the mean of those compiles (cold: nothing cached); "
             "compile_s_per_schema_warm: what a request whose schema was compiled before pays (outlines: a lookup in "
             "the index cache the engine itself filled during the cold pass, as vLLM's settings choose it; xgrammar: "
             "its compiler cache; guidance: it keeps no cache, so it compiles again)"),
}


@dataclass
class BenchOptions:
    data: str
    adapter_name: str
    adapter_path: str
    model: str | None = None
    configs: tuple[str, ...] = DEFAULT_CONFIGS
    limit: int = 32
    hf_limit: int = 8
    batch_size: int = 16
    out: str = "artifacts/bench/latest"
    schema_name: str = "v1"
    max_model_len: int = 2048
    gpu_memory_utilization: float | None = None
    hf_threads: int | None = None
    seed: int = 0
    own_ids: bool = False  # every record its own element ids, hence its own schema (records.with_own_element_ids)
    warm_pass: bool = True  # vLLM configurations generate a second time on the same engine, caches warm
    compile_sample: int | None = None  # measure the front-end compile on the first N distinct schemas only
    engine_args: dict = field(default_factory=dict)  # --engine-arg for every vLLM configuration (runtime.engine_args)
    allow_other_base: bool = False  # decode the adapter on a --model that is not its base, on purpose
    prompt_template: str | None = None  # --prompt-template FILE; None: the adapter's recorded prompt


def parse_configs(text: str | None) -> tuple[str, ...]:
    if not text:
        return DEFAULT_CONFIGS
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise UserError(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if len(set(names)) != len(names):
        raise UserError(f"--configs names a configuration twice: {text}")
    if not names:
        raise UserError("--configs is empty")
    return tuple(names)


def samples_for(config: str, limit: int, hf_limit: int) -> int:
    """hf-outlines decodes one record at a time and is slow: it gets the first ``hf_limit`` samples."""
    return min(limit, hf_limit) if config == "hf-outlines" else limit


def phase_file(result_path: Path) -> Path:
    """Where a worker says which phase it is in (``gen`` while generating)."""
    return result_path.with_name(result_path.name + ".phase")
