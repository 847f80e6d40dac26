"""The real vLLM engine on the embedded model with a LoRA adapter trained by the real trainer."""
import json

import pytest

from patent_risk.evaluate.batch import BatchConfig, run_batch
from patent_risk.runtime.requests import build_requests
from patent_risk.schemas.errors import UserError
from patent_risk.schemas.output import schema_errors

from .conftest import EVAL, Borrowed, check_contract

pytestmark = pytest.mark.engine


def test_constrained_outputs_are_schema_valid_with_exact_ids(engine, eval_records):
    recs = eval_records[:8]
    results = engine.generate(build_requests(recs, "v1", True, engine.count_tokens))
    for rec, res in zip(recs, results):
        assert res.finish_reason == "stop", res
        obj = json.loads(res.raw_output)
        assert schema_errors(obj, "v1") == []
        assert [m["element_id"] for m in obj["matches"]] == rec.element_ids


@pytest.mark.parametrize("name", ["v2", "v3"])
def test_each_schema_is_decoded_in_its_own_key_order(engine, eval_records, name):
    """Issue 18: a constrained decoder writes the keys in the schema's order: v3 its matches before its
    risk_level, v2 a reason before each match (on Gemma's vocabulary: about 12 s to compile v2 for three
    elements here, once, then outlines' disk cache)."""
    from patent_risk.schemas.output import load_schema

    schema = load_schema(name)
    recs = [r for r in eval_records if len(r.elements) == 3][:2]
    results = engine.generate(build_requests(recs, name, True, engine.count_tokens))
    for rec, res in zip(recs, results):
        assert res.finish_reason == "stop", res
        obj = json.loads(res.raw_output)
        assert schema_errors(obj, name) == []
        assert list(obj) == list(schema["properties"])
        item_keys = list(schema["properties"]["matches"]["items"]["properties"])
        assert [list(m) for m in obj["matches"]] == [item_keys] * 3
        assert [m["element_id"] for m in obj["matches"]] == rec.element_ids


def test_progress_is_reported_as_each_request_finishes(engine, eval_records):
    """The offline engine decodes a chunk together; vLLM's own progress hook (use_tqdm as a class) tells the
    progress bar as each request finishes, with its output tokens (issue 15: the bar moves during a chunk)."""
    recs = eval_records[:4]
    calls: list[tuple[int, int]] = []
    results = engine.generate(build_requests(recs, "v1", False, engine.count_tokens),
                              on_finished=lambda n, toks: calls.append((n, toks)))
    assert sum(n for n, _ in calls) == len(recs) and all(n >= 1 for n, _ in calls)
    assert abs(sum(t for _, t in calls) - sum(r.output_tokens for r in results)) <= len(calls)  # 2-decimal rates


def test_run_directory_follows_the_contract_and_resumes(engine, tmp_path):
    out = tmp_path / "run-c"
    cfg = BatchConfig(data=str(EVAL), out=str(out), constrained=True, adapter=engine.adapter, limit=4, chunk_size=2)
    first = run_batch(cfg, lambda m: Borrowed(engine), log=lambda s: None, progress=False)
    assert first.generated == 4
    done = check_contract("run", out)
    assert done.returncode == 0, done.stdout
    before = (out / "results.jsonl").read_bytes()
    # a torn last line, as a crash mid-write leaves it, is repaired and the sample redone
    with open(out / "results.jsonl", "ab") as f:
        f.write(b'{"id": "eval-005", "raw_out')
    cfg.limit = 6
    second = run_batch(cfg, lambda m: Borrowed(engine), log=lambda s: None, progress=False)
    assert (second.done_before, second.generated) == (4, 2)
    after = (out / "results.jsonl").read_bytes()
    assert after.startswith(before)
    ids = [json.loads(line)["id"] for line in after.splitlines()]
    assert len(ids) == len(set(ids)) == 6
    info = json.loads((out / "run.json").read_text())
    assert info["constrained"] is True and info["schema"]["name"] == "v1" and info["adapter"]["sha256"]
    assert info["precompile_s"] >= 0 and info["generation_s"] > info["precompile_s"]
    # the same directory with other settings is refused
    other = BatchConfig(data=str(EVAL), out=str(out), constrained=False, adapter=engine.adapter, limit=8)
    with pytest.raises(UserError, match="constrained"):
        run_batch(other, lambda m: Borrowed(engine), log=lambda s: None, progress=False)


def test_vllm_lora_equals_peft_and_differs_from_base(engine, embedded_model, trained_adapter, tokenizer, eval_records):
    """An adapter that loads but does nothing, or is applied differently at serving time, fails here."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from patent_risk.train.features import prompt_ids

    recs = eval_records[10:14] + [_long_record(tokenizer, eval_records[20:40])]
    reqs = build_requests(recs, "v1", False, engine.count_tokens)
    assert len(prompt_ids(tokenizer, recs[-1])) > 512  # past Gemma 3's 512-token sliding window
    reqs = [r.__class__(r.record_id, r.messages, 24, None) for r in reqs]
    with_lora = [r.raw_output for r in engine.generate(reqs)]
    params = [engine.sampling_params(r) for r in reqs]
    base_out = engine.llm.chat([r.messages for r in reqs], params, use_tqdm=False)
    without = [o.outputs[0].text for o in base_out]

    model = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, trained_adapter).eval()
    hf = []
    with torch.no_grad():
        for rec in recs:
            ids = torch.tensor([prompt_ids(tokenizer, rec)])
            gen = peft_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
            hf.append(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    assert with_lora == hf
    assert with_lora != without


def _long_record(tokenizer, recs):
    """One record whose elements are those of the first of ``recs``, renumbered, taken until its prompt is
    past 512 tokens (Gemma 3's sliding window) and well inside the engine's 1,024."""
    from patent_risk.schemas.records import Record
    from patent_risk.train.features import prompt_ids

    elements: list[dict] = []
    for el in (el for r in recs for el in r.elements):
        elements.append({"id": f"E{len(elements) + 1}", "text": el.text})
        rec = Record(id="long", patent_id=recs[0].patent_id, claim=recs[0].claim, elements=elements,
                     query=recs[0].query)
        if len(prompt_ids(tokenizer, rec)) > 540:
            return rec
    raise AssertionError("the records are too short to build a prompt past 512 tokens")


def test_a_lora_run_directory_refuses_to_resume_merged(engine, tmp_path):
    out = tmp_path / "run-m"
    cfg = BatchConfig(data=str(EVAL), out=str(out), constrained=True, adapter=engine.adapter, limit=2, chunk_size=2)
    run_batch(cfg, lambda m: Borrowed(engine), log=lambda s: None, progress=False)
    assert json.loads((out / "run.json").read_text())["adapter_mode"] == "lora"
    cfg.limit, cfg.merged = 4, True
    with pytest.raises(UserError, match='adapter_mode: "lora" -> "merged"'):
        run_batch(cfg, lambda m: Borrowed(engine), log=lambda s: None, progress=False)
