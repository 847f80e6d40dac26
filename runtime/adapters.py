"""Adapter checks: the files vLLM loads, checked against what vLLM refuses, and the manifest `train` writes beside them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from patent_risk.schemas.errors import UserError

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the LoRA ranks vLLM serves
ALLOWED_MODULES_TO_SAVE = {"classifier", "score"}


def adapter_problems(adapter_config: dict[str, Any], max_lora_rank: int = 16) -> list[str]:
    """Why vLLM would refuse this adapter (empty when it would load it), each with the fix."""
    problems = []
    r = adapter_config.get("r")
    if r not in VLLM_LORA_RANKS:
        problems.append(f"rank r={r} is not one vLLM serves ({list(VLLM_LORA_RANKS)}): retrain with lora_r in that set")
    elif r > max_lora_rank:
        problems.append(f"rank r={r} is above the serving --max-lora-rank {max_lora_rank}: serve with --max-lora-rank {r} or retrain with a lower lora_r")
    if adapter_config.get("use_dora"):
        problems.append("DoRA (use_dora=true) is not supported by vLLM: train without DoRA")
    if adapter_config.get("bias", "none") != "none" or adapter_config.get("lora_bias"):
        problems.append("LoRA bias (bias != 'none' or lora_bias) is not supported by vLLM: train with bias='none'")
    extra = set(adapter_config.get("modules_to_save") or []) - ALLOWED_MODULES_TO_SAVE
    if extra:
        problems.append(f"modules_to_save {sorted(extra)}: vLLM accepts only classifier/score; don't add tokens or save full modules (e.g. lm_head)")
    if adapter_config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {adapter_config.get('peft_type')!r}: vLLM loads LoRA adapters only")
    return problems


def check_adapter_dir(path: str | Path, max_lora_rank: int = 16) -> dict[str, Any]:
    """Validate an adapter folder before any engine starts: files present, safetensors weights only,
    and a config vLLM accepts. Returns the adapter config."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"adapter {p}: not a folder")
    cfg_path = p / "adapter_config.json"
    if not cfg_path.exists():
        raise UserError(f"adapter {p}: adapter_config.json missing (is this a PEFT LoRA adapter folder?)")
    if not (p / "adapter_model.safetensors").exists():
        pickled = [q.name for q in p.glob("*.bin")] + [q.name for q in p.glob("*.pt")]
        hint = f" ({', '.join(pickled)} found: pickled weights are not loaded; re-save with safe_serialization=True)" if pickled else ""
        raise UserError(f"adapter {p}: adapter_model.safetensors missing{hint}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{cfg_path}: not valid JSON: {e}") from None
    problems = adapter_problems(cfg, max_lora_rank)
    if problems:
        raise UserError(f"adapter {p}: vLLM would refuse it:\n  " + "\n  ".join(problems))
    return cfg


def adapter_rank(path: str | Path) -> int | None:
    """The adapter's LoRA rank r from its adapter_config.json (None when it cannot be read: check_adapter_dir says why)."""
    try:
        return int(json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))["r"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    m = Path(path) / "manifest.json"
    return json.loads(m.read_text(encoding="utf-8")) if m.exists() else None
