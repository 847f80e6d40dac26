"""`patent-risk train merge`: the adapter folded into a full-precision copy of its base (no LoRA at serving time).

An adapter trained against an NF4-quantized base (QLoRA) is merged into the base as it saw it: the NF4-rounded
weights, dequantized (train.nf4_base), not the unquantized ones; ``onto="unquantized"`` merges into the
unquantized base instead (the usual practice, and what serving the adapter on the original base amounts to).
Tests compare the merged model's outputs with the adapter's.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from patent_risk.runtime.adapters import check_adapter_dir, read_manifest
from patent_risk.runtime.artifacts import describe_path
from patent_risk.runtime.embedded import resolve_model
from patent_risk.schemas.errors import UserError

from .nf4_base import nf4_base, trained_quantization


def base_of(adapter_dir: Path, base: str | None) -> str | None:
    """The base to merge into: given, else the one the adapter's manifest records (None: the embedded
    model), else the adapter config's base_model_name_or_path."""
    if base:
        return base
    manifest = read_manifest(adapter_dir)
    if manifest is not None:
        return manifest.get("config", {}).get("base_model")
    return json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")


DTYPES = ("float32", "bfloat16", "float16")


def merge_dtype(model_path: str, requested: str | None = None) -> str:
    """The merged model's dtype: the one asked for, else the base's own (its config's ``dtype`` /
    ``torch_dtype``, of the text model for a multimodal one), else float32. Never float16 for Gemma 3,
    whose activations overflow in it: a float16 Gemma 3 base merges in bfloat16, and asking for float16 is
    refused."""
    cfg: dict = {}
    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    text = cfg.get("text_config") or {}
    model_type = str(text.get("model_type") or cfg.get("model_type") or "")
    gemma3 = model_type.startswith("gemma3")
    if requested is not None:
        if requested == "float16" and gemma3:
            raise UserError(f"{model_path}: Gemma 3 is unstable in float16; merge in bfloat16 or float32")
        return requested
    found = text.get("dtype") or text.get("torch_dtype") or cfg.get("dtype") or cfg.get("torch_dtype")
    found = found if found in DTYPES else "float32"
    return "bfloat16" if found == "float16" and gemma3 else found


ONTO = ("trained", "unquantized")


def merge(adapter_dir: str | Path, out_dir: str | Path, base: str | None = None, dtype: str | None = None,
          log: Callable[[str], None] = print, onto: str = "trained") -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if onto not in ONTO:
        raise UserError(f"onto={onto!r}: expected one of {', '.join(ONTO)}")
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    check_adapter_dir(adapter_dir, max_lora_rank=512)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: exists and is not empty; choose another --out")
    model_path = resolve_model(base_of(adapter_dir, base), log)
    quant = trained_quantization(adapter_dir) if onto == "trained" else None
    if quant is not None:  # trained on NF4: merge into the NF4-rounded weights it was trained against
        model_path = str(nf4_base(model_path, quant["double_quant"], log=log))
    dtype = merge_dtype(model_path, dtype)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(model_path).save_pretrained(out_dir)
    manifest = {"kind": "merged-model", "base_model": describe_path(model_path) if Path(model_path).exists() else {"name": model_path},
                "adapter": describe_path(adapter_dir), "dtype": dtype, "onto": "nf4-rounded" if quant else "unquantized",
                "adapter_manifest": read_manifest(adapter_dir),
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (out_dir / "merge_manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    log(f"merged model written to {out_dir}")
    return out_dir


def merged_for(adapter_dir: str | Path, base: str, dtype: str | None = None, log: Callable[[str], None] = print) -> Path:
    """The adapter merged into ``base``, made once and kept under artifacts/merged/ by the content hash
    of adapter and base, so that offline evaluation can run without LoRA (on vLLM's CPU build the LoRA
    ops cost about 30% of the throughput). Written to a temporary folder first, then renamed."""
    import hashlib
    import shutil

    from patent_risk.runtime.artifacts import dir_sha256, subdir

    dtype = merge_dtype(base, dtype)
    onto = "nf4-rounded" if trained_quantization(adapter_dir) else ""
    key = hashlib.sha256(f"{dir_sha256(adapter_dir)}|{dir_sha256(base) if Path(base).is_dir() else base}|{dtype}{onto}".encode()).hexdigest()[:16]
    out = subdir("merged") / key
    if (out / "merge_manifest.json").exists():
        log(f"merged model: reusing {out}")
        return out
    tmp = out.with_name(key + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merge(adapter_dir, tmp, base=base, dtype=dtype, log=log)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
