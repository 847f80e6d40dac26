"""`evaluate constraint-cost` end to end on SmolLM2 with a tiny trained adapter (slow tier: two engines of its
own): two batch sizes of the outlines backend, two repeats of each arm, three records. Every pass starts from an
emptied prefix cache (no prompt token served from it), the arms alternate, greedy repeats write the same text,
the engine ran at the batch size asked, py-spy profiles one more pass per arm (vLLM's processes in it), and a
second invocation with the same settings keeps the points."""
from __future__ import annotations

import json

import pytest

from patent_risk.bench.sweep import SweepOptions, run_sweep

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def test_sweep_two_points_alike_and_resumable(smollm2_model, smollm2_adapter, short_eval, tmp_path):
    out = tmp_path / "sweep"
    lines: list[str] = []
    opts = SweepOptions(data=str(short_eval), adapter_name="tiny", adapter_path=str(smollm2_adapter),
                        model=str(smollm2_model), backends=("outlines",), batch_sizes=(1, 3), repeats=2, limit=3,
                        limit_at={1: 2}, max_model_len=1024, out=str(out), profile_rate=20)
    doc = run_sweep(opts, log=lines.append)

    assert json.loads((out / "sweep.json").read_text(encoding="utf-8")) == doc
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert doc["finished_at"] and [(p["backend"], p["batch"]) for p in doc["points"]] == [("outlines", 1), ("outlines", 3)]
    assert sum("[pass]" in line for line in lines) == 14  # every pass echoed as it finished: the first, the profiled ones too
    for p, records in zip(doc["points"], (2, 3)):
        assert p["status"] == "ok", p.get("log_tail")
        assert p["records"] == records and p["engine_info"]["max_num_seqs"] == p["batch"]
        assert [(x["repeat"], x["arm"]) for x in p["passes"]] == [
            (0, "unconstrained"), (0, "constrained"), (1, "constrained"), (1, "unconstrained")]
        for x in p["passes"]:
            assert x["prefix_cache"] == "reset" and x["cached_prompt_tokens"] == 0 and x["samples"] == records
            assert x["gen_s"] > 0 and x["output_tokens"] > 0
        for arm in ("unconstrained", "constrained"):
            a = p["arms"][arm]
            assert a["same_outputs"] is True and a["passes"] == 2
            assert a["samples_s_min"] <= a["samples_s"] <= a["samples_s_max"]
        assert p["arms"]["constrained"]["json_valid"] == 1.0
        assert p["ratio"] == pytest.approx(p["arms"]["constrained"]["samples_s"] / p["arms"]["unconstrained"]["samples_s"], rel=0.01)
        assert len(p["paired_ratios"]) == 2
        assert p["grammar_warmup"]["schemas"] >= 1 and p["first_pass"]["samples"] == records
        prof = p["profile"]  # py-spy over one more pass per arm: the engine's processes are in it
        assert prof["cpu_s"]["unconstrained"] > 0 and prof["cpu_s"]["constrained"] > 0 and prof["grew_most"]
        raw = (out / "profiles" / f"outlines-b{p['batch']}-constrained.txt").read_text(encoding="utf-8")
        assert 'process ' in raw and "VLLM::" in raw
    md = (out / "sweep.md").read_text(encoding="utf-8")
    assert md.count("\n| outlines | ") == 2 and md.count("## Where the time goes") == 2

    again: list[str] = []
    doc2 = run_sweep(opts, log=again.append)
    assert sum("kept from" in line for line in again) == 2 and not any("[pass]" in line for line in again)
    assert [p["passes"] for p in doc2["points"]] == [p["passes"] for p in doc["points"]]
