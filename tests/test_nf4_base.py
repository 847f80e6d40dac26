"""The NF4-rounded base (train/nf4_base.py): the weights a QLoRA adapter was trained against, as a plain model.

On the real Gemma 3 270M through bitsandbytes' CPU backend: the saved float32 model computes what the NF4 model
computes (the forward pass the trainer ran) up to the 4-bit kernel's arithmetic, while the unquantized base
computes something measurably else.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def _logits(model, tokenizer, text: str):
    import torch

    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits[0].float()


def test_nf4_rounded_base_computes_nearly_what_the_nf4_model_computes(embedded_model, tokenizer, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from patent_risk.train.config import TrainConfig
    from patent_risk.train.nf4_base import MANIFEST, nf4_base
    from patent_risk.train.trainer import quantization_config

    monkeypatch.setenv("PATENT_RISK_HOME", str(tmp_path))
    text = "청구항: 점증제 0.1 내지 2중량%. 제품: 카보머 0.5 wt%"
    nf4 = AutoModelForCausalLM.from_pretrained(
        embedded_model, dtype=torch.float32, device_map={"": "cpu"},
        quantization_config=quantization_config(TrainConfig(double_quant=True), torch.float32))
    want = _logits(nf4, tokenizer, text)
    del nf4
    out = nf4_base(embedded_model, double_quant=True, log=lambda s: None)
    doc = json.loads((out / MANIFEST).read_text())
    assert doc["linear_layers_rounded"] == 18 * 7  # q, k, v, o, gate, up, down in each of the 18 layers
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    rounded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    got = _logits(rounded, tokenizer, text)
    plain = _logits(AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32), tokenizer, text)
    # bitsandbytes' CPU 4-bit kernel does not multiply in exactly float32 (measured here: mean |logit difference|
    # 0.065, max 0.45, same top token everywhere), while the unquantized base is another model (mean 1.14, max
    # 8.8, top token differs at 40% of positions)
    assert bool((got.argmax(-1) == want.argmax(-1)).all())
    assert (got - want).abs().mean().item() * 5 < (plain - want).abs().mean().item()
    assert not bool((plain.argmax(-1) == want.argmax(-1)).all())
    assert nf4_base(embedded_model, double_quant=True, log=lambda s: None) == out  # made once


def test_nf4_base_command_refuses_a_plain_lora_adapter(trained_adapter):
    done = subprocess.run([sys.executable, "-m", "patent_risk.cli.train", "nf4-base", str(trained_adapter)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and "not trained on an NF4 base" in done.stderr


def test_a_qlora_adapter_merges_into_the_base_it_was_trained_against(embedded_model, tmp_path, monkeypatch):
    """A real NF4 training run (2 steps): `train merge` (and evaluate batch --merge) folds it into the NF4-rounded
    base by default, into the original weights with onto="unquantized"; the manifest says which."""
    import torch
    from safetensors.torch import load_file

    from tests.conftest import _train_tiny
    from patent_risk.train.merge import merge
    from patent_risk.train.nf4_base import nf4_base, trained_quantization

    monkeypatch.setenv("PATENT_RISK_HOME", str(tmp_path))
    adapter = _train_tiny(tmp_path / "q", embedded_model, 4, "quantization=nf4", "compute_dtype=fp32", "max_steps=2")
    assert trained_quantization(adapter) == {"double_quant": True}
    rounded = nf4_base(embedded_model, log=lambda s: None)
    key = "model.layers.0.mlp.down_proj.weight"  # no LoRA on it: the merged weight is the base's own
    weights = {}
    for onto, base in (("trained", rounded), ("unquantized", embedded_model)):
        out = merge(adapter, tmp_path / onto, log=lambda s: None, onto=onto)
        doc = json.loads((out / "merge_manifest.json").read_text())
        assert doc["onto"] == {"trained": "nf4-rounded", "unquantized": "unquantized"}[onto]
        merged = load_file(out / "model.safetensors")
        weights[onto] = merged[key]
        torch.testing.assert_close(merged[key], load_file(Path(base) / "model.safetensors")[key])
    assert not torch.equal(weights["trained"], weights["unquantized"])
