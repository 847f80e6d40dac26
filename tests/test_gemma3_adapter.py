"""Gemma 3 4B-it loads as Gemma3ForConditionalGeneration: only its language model may be adapted, and the
adapter's keys must be ones vLLM maps to the language model (else it loads and silently does nothing)."""
import json
from pathlib import Path

import pytest
import torch

from patent_risk.train.trainer import target_modules_for


def vllm_gemma3_mapper():
    """vLLM's own hf_to_vllm_mapper for Gemma 3, read from the installed source: importing that module
    pulls in transformers' image processor, which needs torchvision (not installed on the CPU stack)."""
    import ast
    import importlib.util

    from vllm.model_executor.models.utils import WeightsMapper

    source = Path(importlib.util.find_spec("vllm.model_executor.models.gemma3_mm").origin).read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "hf_to_vllm_mapper":
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.value.keywords}
            return WeightsMapper(**kwargs)
    raise AssertionError("hf_to_vllm_mapper not found in vLLM's gemma3_mm")


@pytest.fixture(scope="module")
def tiny_gemma3():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(0)
    config = Gemma3Config(
        text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 512, "sliding_window": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 28, "patch_size": 14},
        mm_tokens_per_image=4,
    )
    return Gemma3ForConditionalGeneration(config)


def test_only_language_model_attention_is_targeted(tiny_gemma3, tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open

    targets = target_modules_for(tiny_gemma3, ["q_proj", "k_proj", "v_proj", "o_proj"])
    assert isinstance(targets, str) and "language_model" in targets
    model = get_peft_model(tiny_gemma3, LoraConfig(r=16, lora_alpha=32, target_modules=targets, task_type="CAUSAL_LM"))
    model.save_pretrained(tmp_path, safe_serialization=True)
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not any("vision" in k for k in keys)
    assert len(keys) == 2 * 4 * 2  # 2 layers x q/k/v/o x lora_A/lora_B

    from vllm.lora.utils import parse_fine_tuned_lora_name

    mapper = vllm_gemma3_mapper()
    for key in keys:
        module, _ = parse_fine_tuned_lora_name(key, mapper)
        # vLLM's Gemma 3 keeps its text model under language_model.model.layers
        assert module.startswith("language_model.model.layers."), (key, module)
        assert module.rsplit(".", 1)[-1] in {"q_proj", "k_proj", "v_proj", "o_proj"}
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and not cfg.get("use_dora")


def test_plain_causal_lm_targets_module_names(embedded_model):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(embedded_model)
    config.num_hidden_layers = 1
    model = AutoModelForCausalLM.from_config(config)
    assert target_modules_for(model, ["q_proj", "v_proj"]) == ["q_proj", "v_proj"]
