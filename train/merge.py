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
from patent_risk.schemas.errors import UserError

from .nf4_base import MANIFEST as NF4_MANIFEST
from .nf4_base import base_dtype, nf4_base, trained_quantization


def base_of(adapter_dir: Path, base: str | None, allow_other_base: bool = False,
            log: Callable[[str], None] = print) -> Path:
    """The base to merge into, as a local folder: ``base`` when given (refused when it is not the adapter's base
    nor made from it, unless ``allow_other_base``), else the one the adapter records (runtime.bases); a hub id
    is read through the local Hugging Face cache."""
    from patent_risk.runtime.bases import model_folder, settle_model

    return model_folder(settle_model(base, [adapter_dir], allow_other_base=allow_other_base, log=log), log)


ONTO = ("trained", "unquantized")


def merge(adapter_dir: str | Path, out_dir: str | Path, base: str | None = None, dtype: str | None = None,
          log: Callable[[str], None] = print, onto: str = "trained", allow_other_base: bool = False) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if onto not in ONTO:
        raise UserError(f"onto={onto!r}: expected one of {', '.join(ONTO)}")
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    check_adapter_dir(adapter_dir, max_lora_rank=512)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: exists and is not empty; choose another --out")
    model_path = str(base_of(adapter_dir, base, allow_other_base, log))
    quant = trained_quantization(adapter_dir) if onto == "trained" else None
    if quant is not None and (Path(model_path) / NF4_MANIFEST).exists():
        log(f"{model_path} is already NF4-rounded (its {NF4_MANIFEST}): merging into it as it is")
    elif quant is not None:  # trained on NF4: merge into the NF4-rounded weights it was trained against
        model_path = str(nf4_base(model_path, quant["double_quant"], log=log))
    dtype = base_dtype(model_path, dtype)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(model_path).save_pretrained(out_dir)
    from patent_risk.runtime.bases import lineage

    manifest = {"kind": "merged-model", "base_model": describe_path(model_path), "lineage": sorted(lineage(model_path)),
                "adapter": describe_path(adapter_dir), "dtype": dtype, "onto": "nf4-rounded" if quant else "unquantized",
                "adapter_manifest": read_manifest(adapter_dir),
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (out_dir / "merge_manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    log(f"merged model written to {out_dir}")
    return out_dir


def merged_for(adapter_dir: str | Path, base: str, dtype: str | None = None, log: Callable[[str], None] = print,
               allow_other_base: bool = False) -> Path:
    """The adapter merged into ``base``, made once and kept under artifacts/merged/ by the content hash
    of adapter and base, so that offline evaluation can run without LoRA (on vLLM's CPU build the LoRA
    ops cost about 30% of the throughput). Written to a temporary folder first, then renamed."""
    import hashlib
    import shutil

    from patent_risk.runtime.artifacts import dir_sha256, subdir

    from patent_risk.runtime.bases import model_folder

    base = str(model_folder(base, log))
    dtype = base_dtype(base, dtype)
    onto = "nf4-rounded" if trained_quantization(adapter_dir) else ""
    key = hashlib.sha256(f"{dir_sha256(adapter_dir)}|{dir_sha256(base)}|{dtype}{onto}".encode()).hexdigest()[:16]
    out = subdir("merged") / key
    if (out / "merge_manifest.json").exists():
        log(f"merged model: reusing {out}")
        return out
    tmp = out.with_name(key + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merge(adapter_dir, tmp, base=base, dtype=dtype, log=log, allow_other_base=allow_other_base)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
