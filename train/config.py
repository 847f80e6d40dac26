"""The one typed training config: YAML file + `key=value` overrides, validated when built."""
from __future__ import annotations

import difflib
import textwrap
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from patent_risk.runtime.adapters import VLLM_LORA_RANKS
from patent_risk.schemas.errors import UserError
from patent_risk.schemas.labels import SchemaName

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "demo.yaml"
ATTENTION_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP_MODULES = ["gate_proj", "up_proj", "down_proj"]


class TrainConfig(BaseModel):
    """Defaults are the seed recipe (google/gemma-3-4b-it, QLoRA NF4, r=16, alpha=32, 3 epochs, 2 x 8)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str | None = Field(None, description="HF model id or local folder; null = the embedded Gemma 3 270M (gemma-3-270m); an embedded model's name (smollm2) works too.")
    train_data: str | None = Field(None, description=(
        "Training dataset (JSONL, docs/formats.md section 1). Required, no default: name your file (-s train_data=FILE "
        "or in the config); nothing trains on a file you did not name."))
    dev_size: int = Field(0, ge=0, description=(
        "Carve N records off train_data as the dev split (chosen by dev_seed, before anything else): never trained "
        "on, never in the eval-loss slice; `patent-risk train dev-split` writes them out, `evaluate curve` scores recipes on them."))
    dev_seed: int = Field(0, description="Which records form the dev split (kept apart from seed, so that a recipe's seed "
                                         "does not move the dev split).")
    limit: int | None = Field(None, ge=1, description="Use only the first N training records (after the dev split and the held-out slice).")
    eval_fraction: float = Field(0.05, ge=0.0, lt=0.5, description="Share of training records held out for eval loss.")
    schema_name: SchemaName = Field("v1", description="Output schema the answers are written in (v2 needs label.matches[].reason).")
    prompt_template: str | None = Field(None, description=(
        "A Jinja template file for the prompt (the user turn, over the record's fields; schemas/prompt.py); null = the "
        "built-in prompt (p1). Recorded in the adapter's manifest, and evaluation uses it by default."))
    output_name: str = Field("adapter", description="Adapter name; written to artifacts/adapters/NAME.")
    output_dir: str | None = Field(None, description="Write the adapter here instead of artifacts/adapters/NAME.")

    augment_boundary: int = Field(0, ge=0, description=(
        "Add N generated boundary records (datagen.demo.generate_boundary_cases, seed = seed) for the patents "
        "of the training records; demo patents only. Never added to the held-out slice."))
    oversample_where: str | None = Field(None, description=(
        "meta.PATH (e.g. meta.near_boundary): training records whose value there is truthy are repeated "
        "oversample_factor times in all. The held-out slice is never oversampled."))
    oversample_factor: int = Field(1, ge=1, description="How many times in all each oversample_where record appears (1: off).")

    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(ATTENTION_MODULES))
    include_mlp: bool = Field(False, description="Also adapt gate/up/down projections.")
    max_lora_rank_serving: int = Field(16, description="The --max-lora-rank the adapter must fit at serving time.")

    epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run all epochs).")
    per_device_batch: int = Field(2, ge=1)
    grad_accum: int = Field(8, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    weight_decay: float = 0.0
    max_seq_len: int = Field(1024, ge=64, description="Longer examples are refused, never silently truncated.")
    seed: int = 42

    quantization: Literal["auto", "nf4", "none"] = Field("auto", description="auto: NF4 where bitsandbytes runs on the device, else plain LoRA.")
    double_quant: bool = Field(True, description="NF4 only: quantize the quantization constants too (bnb_4bit_use_double_quant).")
    compute_dtype: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 where the hardware is fast at it, else fp32.")
    gradient_checkpointing: bool = False
    train_sampling: Literal["random", "group_by_length"] = Field("random", description=(
        "Order of training records: random (transformers' default), or group_by_length: batches of similar "
        "length (less padding; transformers' LengthGroupedSampler, still shuffled by megabatch)."))
    labelled_logits: bool = Field(True, description=(
        "Compute the output layer and the loss only at labelled positions (the answer), not over the prompt: "
        "the same loss and gradients, fewer FLOPs and far less logits memory (train/labelled_logits.py). "
        "false: the plain path, full logits at every position."))

    logging_steps: int = Field(5, ge=1)
    save_steps: int = Field(25, ge=1)
    save_total_limit: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.lora_r not in VLLM_LORA_RANKS:
            raise ValueError(f"lora_r={self.lora_r}: vLLM serves ranks {list(VLLM_LORA_RANKS)} only")
        if self.lora_r > self.max_lora_rank_serving:
            raise ValueError(f"lora_r={self.lora_r} is above max_lora_rank_serving={self.max_lora_rank_serving}; raise --max-lora-rank at serving or lower lora_r")
        if self.oversample_where is not None:
            parts = self.oversample_where.split(".")
            if len(parts) < 2 or parts[0] != "meta" or not all(parts):
                raise ValueError(f"oversample_where={self.oversample_where!r}: expected meta.KEY or meta.KEY.SUBKEY, "
                                 "e.g. meta.near_boundary")
            if self.oversample_factor < 2:
                raise ValueError(f"oversample_where={self.oversample_where} needs oversample_factor >= 2 "
                                 "(1 leaves the data as it is)")
        elif self.oversample_factor != 1:
            raise ValueError(f"oversample_factor={self.oversample_factor} needs oversample_where=meta.KEY "
                             "(which records to repeat)")
        return self

    def training_file(self) -> str:
        """train_data, or a refusal naming the key when it was not given."""
        if not self.train_data:
            raise UserError("train_data is not set: name your training file (JSONL) with -s train_data=FILE or in "
                            "the config (`patent-risk train qlora --help` lists every key)")
        return self.train_data

    def prompt(self):
        """The prompt the records are rendered with (schemas.prompt.Prompt): the template file's, else the built-in."""
        from patent_risk.schemas.prompt import BUILTIN, load_prompt_template

        return BUILTIN if not self.prompt_template else load_prompt_template(self.prompt_template)

    @property
    def modules(self) -> list[str]:
        return list(dict.fromkeys(self.target_modules + (MLP_MODULES if self.include_mlp else [])))


def _coerce(value: str) -> Any:
    return yaml.safe_load(value)


def _unknown_key(key: str, where: str) -> str:
    close = difflib.get_close_matches(key, TrainConfig.model_fields, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"{where}: unknown key {key!r}: {hint}(`patent-risk train qlora --help` lists every key)"


def describe_fields() -> list[str]:
    """Every config key with its default and description, for `patent-risk train qlora --help`."""
    out = []
    for name, info in TrainConfig.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = "null" if default is None else yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        text = f"{name} ({shown})" + (f": {info.description}" if info.description else "")
        out += textwrap.wrap(text, width=110, initial_indent="  ", subsequent_indent="      ")
    return out


def config_path(path: str | Path | None) -> Path:
    """The config file: ``path`` as given when it exists, else the packaged recipe of that name (``seed``,
    ``seed.yaml`` or ``train/configs/seed.yaml`` from any folder, installed or not); the demo recipe for None."""
    if not path:
        return DEFAULT_CONFIG
    p = Path(path)
    if not p.exists() and not p.is_absolute():
        for packaged in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
            if packaged.is_file():
                return packaged
    return p


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Load a YAML config (the demo recipe when ``path`` is None; a packaged recipe by name, see config_path) and
    apply ``key=value`` overrides."""
    path = config_path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config fields")
    unknown = [_unknown_key(k, str(path)) for k in data if k not in TrainConfig.model_fields]
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected key=value (`patent-risk train qlora --help` lists every key)")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in TrainConfig.model_fields:
            unknown.append(_unknown_key(key, f"-s {item}"))
        data[key] = _coerce(value)
    if unknown:
        raise UserError("\n".join(unknown))
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"{path}: {'.'.join(map(str, err['loc'])) or 'config'}: {err['msg'].removeprefix('Value error, ')}"
                 for err in e.errors()]
        raise UserError("\n".join(lines)) from None
