"""The base model an NF4-trained (QLoRA) adapter actually saw, as a plain model vLLM loads.

QLoRA trains the adapter against the NF4-rounded base: every quantized Linear's weight is, in the forward
pass, dequantize(quantize(W)), not W. vLLM serves the adapter on whatever base it is given, usually the
unquantized one, so the adapter meets weights it was not trained against (on a small model that flipped
every answer: docs/2026-12-03-demo-recipe.md, "QLoRA trained, served unquantized"). This module writes the other base: the same
model loaded through bitsandbytes exactly as the trainer loads it (train.trainer.quantization_config), then
dequantized (transformers' ``model.dequantize``) and saved in the base's own dtype. Served with the adapter as a
LoRA module, or merged with it (train.merge), it is the model the adapter was trained with, up to the 4-bit
kernel's own arithmetic (on Gemma 3 270M, CPU: mean |logit difference| 0.065 against 1.14 for the unquantized
base, same top token), at vLLM's speed and with its constrained decoding; it is as large on disk as the
unquantized base.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from patent_risk.runtime.artifacts import describe_path, dir_sha256, subdir
from patent_risk.schemas.errors import UserError

MANIFEST = "nf4_base_manifest.json"
_SKIP = {"config.json", "generation_config.json"}  # written by save_pretrained


def trained_quantization(adapter_dir: str | Path) -> dict[str, Any] | None:
    """How the adapter's base was quantized in training ({"double_quant": ...} for NF4), from its manifest;
    None for plain LoRA or an adapter without a manifest."""
    from patent_risk.runtime.adapters import read_manifest

    manifest = read_manifest(adapter_dir) or {}
    if (manifest.get("hardware") or {}).get("quantization") != "nf4":
        return None
    return {"double_quant": bool((manifest.get("config") or {}).get("double_quant", True))}


DTYPES = ("float32", "bfloat16", "float16")


def base_dtype(model_path: str | Path, requested: str | None = None) -> str:
    """The dtype a model made from ``model_path`` is written in: the one asked for, else the base's own (its
    config's ``dtype`` / ``torch_dtype``, of the text model for a multimodal one: bfloat16 for gemma-3-4b-it,
    float32 for the embedded models), else float32. Never float16 for Gemma 3, whose activations overflow in
    it: a float16 Gemma 3 base is written in bfloat16, and asking for float16 is refused."""
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
            raise UserError(f"{model_path}: Gemma 3 is unstable in float16; use bfloat16 or float32")
        return requested
    found = text.get("dtype") or text.get("torch_dtype") or cfg.get("dtype") or cfg.get("torch_dtype")
    found = found if found in DTYPES else "float32"
    return "bfloat16" if found == "float16" and gemma3 else found


def nf4_base(model_path: str | Path, double_quant: bool = True, log: Callable[[str], None] = print,
             dtype: str | None = None) -> Path:
    """``model_path`` (a local folder; runtime.bases.model_folder makes one of a hub id) rounded through NF4 as
    the trainer loads it, dequantized and saved in the base's own dtype (``base_dtype``); made once and kept
    under artifacts/nf4_bases/ by the content hash of the base and the settings. Its manifest records the
    base's content hash and lineage, so that it counts as made from that base (runtime.bases)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from patent_risk.runtime.bases import lineage

    from .config import TrainConfig
    from .trainer import quantization_config

    model_path = Path(model_path)
    if not (model_path / "config.json").exists():
        raise UserError(f"{model_path}: not a local model folder (config.json missing)")
    dtype = base_dtype(model_path, dtype)
    torch_dtype = getattr(torch, dtype)
    key = hashlib.sha256(f"{dir_sha256(model_path)}|nf4|double_quant={double_quant}"
                         f"{'' if dtype == 'float32' else '|' + dtype}".encode()).hexdigest()[:16]
    out = subdir("nf4_bases") / key
    if (out / MANIFEST).exists():
        log(f"NF4-rounded base: reusing {out}")
        return out
    log(f"rounding {model_path} through NF4 (double_quant={double_quant}) as the trainer loads it, into {dtype} ...")
    cfg = TrainConfig(double_quant=double_quant)
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch_dtype, quantization_config=quantization_config(cfg, torch_dtype),
        device_map={"": "cuda:0" if torch.cuda.is_available() else "cpu"})
    quantized = sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit")
    model = model.dequantize(dtype=torch_dtype)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    tmp = out.with_name(key + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to("cpu").save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(model_path).save_pretrained(tmp)
    for f in model_path.iterdir():  # the model's own texts (licence, provenance, template) travel with it
        if f.is_file() and f.name not in _SKIP and not f.name.endswith(".safetensors") and not (tmp / f.name).exists():
            shutil.copy2(f, tmp / f.name)
    doc = {"kind": "nf4-rounded-base", "base_model": describe_path(model_path), "lineage": sorted(lineage(model_path)),
           "quantization": "nf4", "double_quant": double_quant, "dtype": dtype, "linear_layers_rounded": quantized,
           "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (tmp / MANIFEST).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"NF4-rounded base written to {out} ({quantized} linear layers rounded, {dtype})")
    return out
