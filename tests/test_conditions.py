"""Speed figures say their conditions (issue 33): run.json records, per invocation, the prefix cache's state and the
prompt tokens it served, the grammar cache, the batch and the machine; the report puts two runs' throughput as a
ratio only when those match, and otherwise says what differs."""
from __future__ import annotations

import json

import pytest

from patent_risk.evaluate.conditions import describe, differences, speed_comparison, summarize

MACHINE = {"cpu": "Intel(R) Xeon(R) Processor (family 6 model 207)", "cpus": 2, "gpu": None}


def _inv(**kw):
    base = {"samples": 4, "machine": MACHINE, "mode": "offline", "shared_with": None, "prefix_cache": "empty (a fresh engine)",
            "prompt_tokens": 1000, "cached_prompt_tokens": 0, "grammar_cache": "warm", "chunk_size": 160,
            "max_num_seqs": 160, "max_concurrency": None, "label_probs": True}
    return {**base, **kw}


def test_two_arms_measured_alike_get_a_ratio_and_a_warm_prefix_cache_does_not():
    con = summarize([_inv()])
    alike = summarize([_inv(grammar_cache=None, shared_with="runs/demo-constrained", prefix_cache="reset")])
    assert differences(con, alike) == []  # shared, but emptied first: alike; no grammar cache to compare unconstrained
    sp = speed_comparison({"samples_per_s": 2.0}, {"samples_per_s": 1.7}, alike, con)
    assert sp["ratio"] == 0.85 and sp["conditions_differ"] == []
    # the same arm second on the engine without a reset: its prompts came from the cache
    warm = summarize([_inv(grammar_cache=None, shared_with="runs/demo-constrained", prefix_cache="not reset: x",
                           cached_prompt_tokens=980)])
    sp = speed_comparison({"samples_per_s": 1.31}, {"samples_per_s": 2.39}, con, warm)
    assert sp["ratio"] is None and (sp["reference_samples_per_s"], sp["run_samples_per_s"]) == (1.31, 2.39)
    assert len(sp["conditions_differ"]) == 1 and "prefill" in sp["conditions_differ"][0]
    assert "0% of prompt tokens" in sp["conditions_differ"][0] and "98%" in sp["conditions_differ"][0]


@pytest.mark.parametrize("field, value, words", [
    ("chunk_size", 32, "chunk size: 160 -> 32"), ("max_num_seqs", 8, "max_num_seqs: 160 -> 8"),
    ("label_probs", False, "label probabilities: True -> False"), ("mode", "server", "engine: offline -> server"),
    ("grammar_cache", "cold", "grammar cache: warm -> cold"),
    ("machine", {**MACHINE, "cpu": "AMD EPYC"}, "machine: Intel"),
])
def test_each_condition_that_differs_is_named(field, value, words):
    got = differences(summarize([_inv()]), summarize([_inv(**{field: value})]))
    assert len(got) == 1 and got[0].startswith(words), got


def test_a_server_that_could_not_be_reset_and_does_not_say_what_it_cached_is_not_compared():
    ref = summarize([_inv(mode="server", prefix_cache="not reset: no endpoint", cached_prompt_tokens=None,
                          max_num_seqs=None, max_concurrency=8)])
    run = summarize([_inv(mode="server", prefix_cache="not reset: no endpoint", cached_prompt_tokens=None,
                          max_num_seqs=None, max_concurrency=8, grammar_cache=None)])
    got = differences(ref, run)
    assert len(got) == 1 and "unknown share" in got[0] and "not emptied" in got[0]
    # told, and the same share (both none cached): alike although not reset
    ref2 = summarize([_inv(prefix_cache="not reset: no endpoint")])
    assert differences(ref2, summarize([_inv(prefix_cache="not reset: no endpoint", cached_prompt_tokens=20)])) == []


def test_a_resumed_run_sums_its_tokens_and_says_mixed_where_its_invocations_differ():
    c = summarize([_inv(), _inv(chunk_size=32, cached_prompt_tokens=None)])
    assert c["invocations"] == 2 and c["chunk_size"] == "mixed" and c["prompt_tokens"] == 2000
    assert c["cached_prompt_tokens"] is None and c["prefix_cache_emptied"]
    assert "chunk size" in differences(summarize([_inv()]), c)[0]
    assert "2 invocations (resumed)" in describe(c)
    assert summarize(None) is None and differences(None, c) == ["conditions not recorded (a run made before they were)"]


def test_the_report_gives_a_ratio_only_between_runs_measured_alike_and_says_why_not(tmp_path):
    from patent_risk.evaluate.report import build_report

    from .runs import write_run
    from .test_report import info, simple

    rows = [simple(f"s{i}", "높음", "높음", output_tokens=20, prompt_tokens=250) for i in range(4)]

    def run(name, constrained, seconds, **cond):
        extra = {"generation_s": seconds, "precompile_s": 1.0 if constrained else 0.0, "conditions": [_inv(**cond)]}
        return write_run(tmp_path / name, rows, {**info(constrained), **extra})

    con = run("con", True, 3.0)  # 4 samples in 3.0 - 1.0 s of decoding: 2.0 samples/s, the compile left out
    alike = run("alike", False, 1.5, grammar_cache=None, prefix_cache="reset", shared_with=str(tmp_path / "con"))
    warm = run("warm", False, 0.5, grammar_cache=None, prefix_cache="not reset: x", cached_prompt_tokens=990)
    rep = build_report([con, alike, warm], bootstrap=0)
    assert rep.metrics["runs"]["con"]["speed"]["samples_per_s"] == 2.0
    sp = {c["run"]: c["speed"] for c in rep.metrics["comparisons"]}
    assert sp["alike"]["ratio"] == round((4 / 1.5) / 2.0, 3) and not sp["alike"]["conditions_differ"]
    assert sp["warm"]["ratio"] is None and "prefill" in sp["warm"]["conditions_differ"][0]
    md = rep.markdown
    assert "alike vs con: 2.667 vs 2.000 samples/s: 1.33x (measured alike)" in md, md
    assert "warm vs con: 8.000 vs 2.000 samples/s; no ratio: not measured alike (prefill:" in md
    assert "speed conditions" in md and "engine shared with" in md


@pytest.mark.engine
def test_a_second_pass_finds_its_prompts_in_the_prefix_cache_unless_it_is_reset(engine, eval_records, tmp_path):
    """On the real engine: the same prompt again without a reset is served from vLLM's prefix cache; after a
    reset it is prefilled again. run_batch empties the cache of an engine that served earlier requests and
    records it, with the prompt tokens the cache served."""
    from patent_risk.evaluate.batch import BatchConfig, Borrowed, run_batch
    from patent_risk.runtime.requests import build_requests

    from dataclasses import replace

    req = [replace(r, max_tokens=8) for r in build_requests(eval_records[:1], "v1", False, engine.count_tokens)]
    engine.generate(req)
    again = engine.generate(req)[0]
    assert again.cached_tokens > 0 and again.cached_tokens <= again.prompt_tokens
    assert engine.reset_prefix_cache() == "reset"
    assert engine.generate(req)[0].cached_tokens == 0

    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps(eval_records[0].model_dump(), ensure_ascii=False) + "\n", encoding="utf-8")
    for name, lent in (("a", Borrowed(engine)), ("b", Borrowed(engine, shared_with="a"))):
        cfg = BatchConfig(data=str(data), out=str(tmp_path / name), constrained=True, max_model_len=1024, chunk_size=4,
                          adapter=engine.adapter, model=engine.model_path)
        run_batch(cfg, lambda m: lent, log=lambda s: None, progress=False)
        info = json.loads((tmp_path / name / "run.json").read_text())
        (c,) = info["conditions"]
        assert c["prefix_cache"] == "reset" and c["cached_prompt_tokens"] == 0 and c["prompt_tokens"] > 0, c
        assert c["grammar_cache"] in ("warm", "cold") and c["max_num_seqs"] and c["chunk_size"] == 4
        assert c["shared_with"] == (None if name == "a" else "a") and c["machine"]["cpus"] >= 1
        row = json.loads((tmp_path / name / "results.jsonl").read_text())
        assert row["cached_tokens"] == 0
