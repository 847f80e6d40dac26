"""bench.offline_summary and bench.offline_configs: the pure parts: a worker result summarized, ratios, identical outputs, the markdown table."""
from __future__ import annotations

import json

import pytest

from patent_risk.bench.offline_configs import parse_configs
from patent_risk.bench.offline_summary import compare_outputs, identical_outputs, ratios, summarize_run, to_markdown
from patent_risk.schemas.errors import UserError

VALID = '{"risk_level":"낮음","matches":[{"element_id":"E1","match":"대응"}]}'


def _raw(config, gen_s, outputs, **extra):
    return {"config": config, "status": "ok", "load_s": 1.0, "gen_s": gen_s, "outputs": outputs, "peak_pss_mb": 100.0,
            **extra}


def _out(rid, text, tokens=10, reason="stop"):
    return {"record_id": rid, "raw_output": text, "finish_reason": reason, "prompt_tokens": 5, "output_tokens": tokens,
            "max_tokens": 20}


def test_summary_counts_validity_finish_reasons_and_rates():
    run = summarize_run(_raw("vllm", 2.0, [_out("a", VALID), _out("b", VALID[:-5], 20, "length")]),
                        [{"record_id": "a", "max_tokens": 20}, {"record_id": "b", "max_tokens": 20}])
    assert run["samples"] == 2 and run["output_tokens"] == 30
    assert run["output_tok_s"] == 15.0 and run["samples_s"] == 1.0
    assert run["json_valid"] == 0.5 and run["json_valid_count"] == 1
    assert run["finish_reasons"] == {"length": 1, "stop": 1}
    assert run["same_max_tokens"] is True
    assert run["compile_s"] is None
    same = summarize_run(_raw("merged", 1.0, [_out("a", VALID), _out("b", VALID[:-5], 20, "length")]))
    assert same["outputs_sha256"] == run["outputs_sha256"]


def test_ratios_and_identical_outputs(tmp_path):
    runs = [summarize_run(_raw("vllm", 2.0, [_out("a", VALID)])), summarize_run(_raw("merged", 1.0, [_out("a", VALID)])),
            summarize_run(_raw("vllm-outlines", 4.0, [_out("a", VALID)])),
            summarize_run(_raw("hf-outlines", 40.0, [_out("a", VALID)])),
            {"config": "merged-outlines", "engine": "vllm", "adapter_mode": "merged", "constrained": True,
             "backend": "outlines", "status": "failed", "error": "worker exited with 1"}]
    q = {(r["numerator"], r["denominator"], r["metric"]): r["value"] for r in ratios(runs)}
    assert q[("vllm", "merged", "output_tok_s")] == 0.5
    assert q[("vllm-outlines", "vllm", "samples_s")] == 0.5
    assert q[("vllm-outlines", "hf-outlines", "samples_s")] == 10.0
    assert not any(k[1] == "merged-outlines" for k in q)  # failed runs give no ratio
    (tmp_path / "vllm.jsonl").write_text(json.dumps(_out("a", VALID)) + "\n" + json.dumps(_out("b", "x")) + "\n")
    (tmp_path / "merged.jsonl").write_text(json.dumps(_out("a", VALID)) + "\n" + json.dumps(_out("b", "y")) + "\n")
    pairs = identical_outputs(runs, tmp_path)
    assert pairs == [{"a": "vllm", "b": "merged", "compared": 2, "identical": 1, "share": 0.5}]
    assert compare_outputs({"a": "1"}, {"b": "1"}) == {"compared": 0, "identical": 0, "share": None}
    md = to_markdown({"runs": runs, "ratios": ratios(runs), "identical_outputs": pairs, "notes": ["n"]})
    assert "| vllm | vllm | lora | none | 1 | — | 10 |" in md
    assert "FAILED: worker exited with 1" in md
    assert "| vllm vs merged | 2 | 1 | 0.5 |" in md


def test_warm_pass_figures_and_their_ratio():
    """A vLLM worker's warm pass (same requests, grammars cached) gives its own rates; the constrained/
    unconstrained ratio is taken warm as well as cold; outputs that differ between the passes are flagged."""
    warm = lambda s, same=True: {"gen_s": s, "output_tokens": 10, "same_outputs": same,  # noqa: E731
                                 "finish_reasons": {"stop": 1}}
    free = summarize_run(_raw("vllm", 2.0, [_out("a", VALID)], warm=warm(1.0)))
    cons = summarize_run(_raw("vllm-outlines", 4.0, [_out("a", VALID)], warm=warm(1.25, same=False),
                              distinct_schemas=1))
    assert (cons["gen_s_warm"], cons["samples_s_warm"], cons["output_tok_s_warm"]) == (1.25, 0.8, 8.0)
    assert cons["warm_same_outputs"] is False and cons["warm_finish_reasons"] == {"stop": 1}
    q = {(r["numerator"], r["denominator"], r["metric"]): r["value"] for r in ratios([free, cons])}
    assert q[("vllm-outlines", "vllm", "samples_s")] == 0.5 and q[("vllm-outlines", "vllm", "samples_s_warm")] == 0.8
    hf = summarize_run(_raw("hf", 3.0, [_out("a", VALID)]))
    assert hf["gen_s_warm"] is None and hf["samples_s_warm"] is None
    md = to_markdown({"runs": [free, cons, hf], "own_ids": True})
    assert "| vllm-outlines | vllm | lora | outlines | 1 | 1 | 10 | 1 | 4 | 0.25 | 1.25 | 0.8 (other outputs!) |" in md
    assert "--own-ids (a schema per record)" in md


def test_per_schema_compile_and_time_to_first_token():
    """compile seconds per schema, cold and warm (the worker's per-schema lists), and TTFT quantiles per pass;
    outputs without a TTFT (HF) give None, never 0."""
    outs = [dict(_out(r, VALID), ttft_s=t) for r, t in (("a", 0.5), ("b", 1.5), ("c", 0.9), ("d", None))]
    warm = {"gen_s": 1.0, "output_tokens": 40, "same_outputs": True, "finish_reasons": {"stop": 4},
            "ttft_s": [0.1, 0.2, 0.3, 0.4]}
    run = summarize_run(_raw("vllm-outlines", 2.0, outs, warm=warm, distinct_schemas=2, compile_s=5.0,
                             compile_per_schema_s=[2.0, 3.0], compile_per_schema_warm_s=[0.1, 0.3]))
    assert (run["compile_s_per_schema"], run["compile_s_per_schema_max"], run["compile_s_per_schema_warm"]) == (2.5, 3.0, 0.2)
    assert (run["ttft_s_median"], run["ttft_s_p90"]) == (0.9, 1.5)
    assert (run["ttft_s_median_warm"], run["ttft_s_p90_warm"]) == (0.3, 0.4)
    hf = summarize_run(_raw("hf", 1.0, [_out("a", VALID)]))
    assert hf["ttft_s_median"] is None and hf["compile_s_per_schema"] is None and hf["compile_s_per_schema_warm"] is None
    md = to_markdown({"runs": [run]})
    assert "| 2.5 (0.2); +— setup | 0.9 (0.3) |" in md


def test_configs_are_checked():
    assert parse_configs("hf,vllm") == ("hf", "vllm")
    assert parse_configs(None)[0] == "hf"
    with pytest.raises(UserError, match="unknown configuration"):
        parse_configs("hf,vlm")
    with pytest.raises(UserError, match="twice"):
        parse_configs("hf,hf")
