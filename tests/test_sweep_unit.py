"""`evaluate constraint-cost`'s pure parts: the pass order, a point's summary (medians, spread, ratios) against
figures computed by hand, the table, the option parsers."""
from __future__ import annotations

import pytest

from patent_risk.bench.sweep import parse_backends, parse_int_list, parse_limit_at
from patent_risk.bench.sweep_summary import pass_order, summarize_point, to_markdown
from patent_risk.schemas.errors import UserError


def test_arms_alternate_which_goes_first():
    assert pass_order(3) == [(0, "unconstrained"), (0, "constrained"), (1, "constrained"), (1, "unconstrained"),
                             (2, "unconstrained"), (2, "constrained")]


def _pass(repeat, arm, gen_s, samples=10, out_tokens=600, pre=0.0, sha="a", others=0.0):
    return {"repeat": repeat, "arm": arm, "gen_s": gen_s, "precompile_s": pre, "samples": samples,
            "prompt_tokens": 2000, "cached_prompt_tokens": 0, "output_tokens": out_tokens, "prefix_cache": "reset",
            "finish_reasons": {"stop": samples}, "outputs_sha256": sha, "contention": {"others_cpu_per_wall": others}}


def _raw(passes):
    return {"backend": "outlines", "batch": 8, "records": 10, "repeats": 3, "status": "ok", "passes": passes}


def test_point_summary_by_hand():
    # unconstrained 10 samples in 5, 4, 5 s -> 2.0, 2.5, 2.0 samples/s; constrained in 10, 5.5 (0.5 of it the
    # compile-ahead: 5 s decoding), 8 s -> 1.0, 2.0, 1.25
    passes = [_pass(0, "unconstrained", 5.0), _pass(0, "constrained", 10.0), _pass(1, "constrained", 5.5, pre=0.5),
              _pass(1, "unconstrained", 4.0), _pass(2, "unconstrained", 5.0), _pass(2, "constrained", 8.0)]
    p = summarize_point(_raw(passes), {"unconstrained": 9, "constrained": 10})
    u, c = p["arms"]["unconstrained"], p["arms"]["constrained"]
    assert (u["samples_s"], u["samples_s_min"], u["samples_s_max"]) == (2.0, 2.0, 2.5)
    assert (c["samples_s"], c["samples_s_min"], c["samples_s_max"]) == (1.25, 1.0, 2.0)
    assert u["spread"] == pytest.approx(0.25) and c["spread"] == pytest.approx(0.8)
    assert p["ratio"] == pytest.approx(0.625)
    assert p["paired_ratios"] == [0.5, 0.8, 0.625]  # 1.0/2.0, 2.0/2.5, 1.25/2.0
    assert (p["paired_ratio_min"], p["paired_ratio_max"]) == (0.5, 0.8)
    assert p["meets_goal"] is False and p["contended"] is False
    assert u["json_valid"] == 0.9 and c["json_valid"] == 1.0
    assert u["same_outputs"] and c["precompile_s"] == 0.5
    assert u["output_tok_s"] == 120.0  # 600 tokens / 5 s (the median pass)


def test_point_summary_flags_contention_different_text_and_goal():
    passes = [_pass(0, "unconstrained", 5.0), _pass(0, "constrained", 5.2, sha="b", others=0.5),
              _pass(1, "constrained", 5.0, sha="c"), _pass(1, "unconstrained", 5.0)]
    p = summarize_point(_raw(passes))
    assert p["meets_goal"] is True and p["contended"] is True
    assert p["arms"]["constrained"]["same_outputs"] is False and p["arms"]["unconstrained"]["same_outputs"] is True
    doc = {"created_at": "t", "machine": {"cpu": "cpu", "cpus": 2}, "base_model": "m", "adapter": {"name": "a", "path": "p"},
           "schema": "v1", "data": "d", "limit": 10, "limit_at": {"1": 4}, "repeats": 2, "max_model_len": 1024,
           "label_probs": False, "notes": ["n"], "points": [p, {"backend": "guidance", "batch": 1, "status": "failed",
                                                                 "error": "worker exited with 1"}]}
    md = to_markdown(doc)
    assert "| outlines | 8 | 10 | 2.0 (2.0-2.0) | 1.962 (1.923-2.0) | 0.981 | 0.962-1.0 |" in md
    assert "yes (contended)" in md and "failed: worker exited with 1" in md
    assert "outlines-b8: constrained outputs differ between repeats" in md


def test_failed_point_keeps_its_error():
    p = summarize_point({"backend": "xgrammar", "batch": 1, "status": "failed", "error": "boom", "log_tail": ["x"]})
    assert p["error"] == "boom" and "arms" not in p


def test_option_parsers():
    assert parse_int_list("1, 8,32", "--batch-sizes") == (1, 8, 32)
    assert parse_backends("xgrammar,outlines") == ("xgrammar", "outlines")
    assert parse_limit_at(("1=32", "8=64")) == {1: 32, 8: 64}
    for bad in ("0,8", "8,8", "a", ""):
        with pytest.raises(UserError, match="--batch-sizes"):
            parse_int_list(bad, "--batch-sizes")
    with pytest.raises(UserError, match="--backends"):
        parse_backends("outlines,lmformat")
    with pytest.raises(UserError, match="BATCH=RECORDS"):
        parse_limit_at(("1:32",))


RAW_U = ('process 10:"python3 -m patent_risk.bench.sweep_worker";run_point (/work/main/bench/sweep_worker.py:70);'
         'generate (/work/main/runtime/engines.py:380) 30\n'
         'process 10:"python3 -m patent_risk.bench.sweep_worker";process 11:"VLLM::Worker";'
         'execute_model (site-packages/vllm/v1/worker/cpu_model_runner.py:12) 50\n')
RAW_C = (RAW_U.replace(" 50\n", " 60\n")
         + 'process 10:"python3 -m patent_risk.bench.sweep_worker";process 11:"VLLM::Worker";'
           'execute_model (site-packages/vllm/v1/worker/cpu_model_runner.py:12);'
           'apply_grammar_bitmask (site-packages/vllm/v1/structured_output/utils.py:90) 20\n'
         + 'process 10:"python3 -c import x\nprint(1) 5";f (<string>:1) 10\n')  # a command line with a newline


def test_stacks_by_hand():
    from patent_risk.bench.stacks import compare, frame_key, parse_raw

    assert frame_key('process 11:"VLLM::Worker"') == "[VLLM::Worker]"
    assert frame_key('process 10:"/v/bin/python3 -m patent_risk.bench.sweep_worker --spec s"') == "[-m patent_risk.bench.sweep_worker]"
    assert frame_key("generate (/work/main/runtime/engines.py:380)") == "generate (main/runtime/engines.py)"
    stacks = parse_raw(RAW_C)
    assert [n for _, n in stacks] == [30, 60, 20, 10]
    assert stacks[3][0][0] == 'process 10:"python3 -c import x\nprint(1) 5"'
    c = compare(RAW_U, RAW_C, rate=10, top=8)
    assert c["cpu_s"] == {"unconstrained": 8.0, "constrained": 12.0}
    # execute_model: 50 -> 80 samples (its own 60 and the bitmask's 20 below it); the bitmask: 0 -> 20
    grew = {g["function"]: g for g in c["grew_most"]}
    assert grew["execute_model (vllm/v1/worker/cpu_model_runner.py)"]["extra_s"] == 3.0
    assert grew["apply_grammar_bitmask (vllm/v1/structured_output/utils.py)"] == {
        "function": "apply_grammar_bitmask (vllm/v1/structured_output/utils.py)", "unconstrained_s": 0.0,
        "constrained_s": 2.0, "extra_s": 2.0}
    top = c["self_top"]["constrained"][0]
    assert top == {"function": "execute_model (vllm/v1/worker/cpu_model_runner.py)", "self_s": 6.0, "share": 0.5}
