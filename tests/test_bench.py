"""`evaluate bench --own-ids` end to end on 2 samples: HF + PEFT, HF + PEFT + outlines (llguidance) and vLLM + LoRA
+ outlines, each in its own worker process, on SmolLM2 (three engines: the faster second model) with a tiny
trained adapter, on the eval split's three-element records (the shortest answers), each record with element
ids of its own (a schema per record); vLLM's cold and warm passes."""
from __future__ import annotations

import json
import sqlite3

import pytest

from patent_risk.bench.offline import run_bench
from patent_risk.bench.offline_configs import BenchOptions

pytestmark = pytest.mark.engine


def test_bench_runs_three_configurations_with_plausible_numbers(smollm2_model, smollm2_adapter, short_eval, tmp_path):
    out = tmp_path / "bench"
    lines: list[str] = []
    # hf_threads=1: on a 2-core machine shared with other jobs, two OpenMP threads spin-wait and run ~10x slower.
    opts = BenchOptions(data=str(short_eval), adapter_name="tiny", adapter_path=str(smollm2_adapter), model=str(smollm2_model),
                        configs=("hf", "hf-outlines", "vllm-outlines"), limit=2, hf_limit=1, batch_size=2, out=str(out),
                        max_model_len=1024, hf_threads=1, own_ids=True)
    doc = run_bench(opts, log=lines.append)

    assert json.loads((out / "bench.json").read_text(encoding="utf-8")) == doc
    assert (out / "bench.md").read_text(encoding="utf-8").count("\n| ") >= 4
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert [r["config"] for r in doc["runs"]] == ["hf", "hf-outlines", "vllm-outlines"]
    assert sum("[bench]" in line for line in lines) >= 4  # a progress line per configuration
    by = {r["config"]: r for r in doc["runs"]}
    samples = {"hf": 2, "hf-outlines": 1, "vllm-outlines": 2}  # hf-outlines takes --hf-limit samples
    for name, run in by.items():
        n = samples[name]
        assert run["status"] == "ok", (name, run.get("log_tail"))
        assert run["samples"] == n and run["same_max_tokens"]
        assert 0 < run["output_tokens"] <= run["max_tokens_total"]
        assert run["gen_s"] > 0 and run["load_s"] > 0
        assert run["output_tok_s"] == pytest.approx(run["output_tokens"] / run["gen_s"], rel=0.01)
        assert run["samples_s"] == pytest.approx(n / run["gen_s"], rel=0.01)
        assert 100 < run["peak_pss_mb"] < 64_000 and run["peak_pss_gen_mb"]
        assert sum(run["finish_reasons"].values()) == n
        assert len(run["outputs_sha256"]) == 16
        assert 0.0 <= run["json_valid"] <= 1.0
    for name in ("hf-outlines", "vllm-outlines"):
        assert by[name]["json_valid"] == 1.0
        assert by[name]["finish_reasons"] == {"stop": samples[name]}
        assert by[name]["compile_s"] is not None and by[name]["compile_s"] >= 0 and by[name]["compile_what"]
        assert by[name]["distinct_schemas"] == samples[name]  # --own-ids: a schema per record
    assert by["hf"]["compile_s"] is None
    # HF has no warm pass; vLLM's repeats the same greedy requests with every grammar cached
    assert by["hf"]["gen_s_warm"] is None and by["hf-outlines"]["samples_s_warm"] is None
    vo = by["vllm-outlines"]
    assert vo["gen_s_warm"] > 0 and vo["samples_s_warm"] == pytest.approx(2 / vo["gen_s_warm"], rel=0.01)
    assert vo["warm_same_outputs"] is True and vo["warm_finish_reasons"] == {"stop": 2}
    # per-schema compile cold and warm (outlines warm: a lookup in the cache the engine filled), and TTFT
    assert vo["compile_s_per_schema"] == pytest.approx(vo["compile_s"] / 2, abs=1e-3)
    assert 0 <= vo["compile_s_per_schema_warm"] < vo["compile_s_per_schema"]
    assert 0 < vo["ttft_s_median"] <= vo["ttft_s_p90"] and 0 < vo["ttft_s_median_warm"]
    # the offline engine compiled both records' schemas in its front end before the cold pass; the warm pass found them
    pre = vo["engine_info"]["outlines_precompiled"]
    assert pre["cold"]["compiled_or_found"] == 2 and pre["cold"]["failed"] == 0
    assert pre["cold_and_warm"]["compiled_or_found"] == 4
    # the cold pass started from an empty outlines cache of the worker's own, and the engine core stored
    # there each record's index (keyed by vocabulary hash and the schema's regex, which holds the ids, escaped)
    db = out / "workers" / "outlines-cache-vllm-outlines" / "outlines_cache.db"
    with sqlite3.connect(db) as con:
        keys = [k.replace("\\", "") for (k,) in con.execute("SELECT key FROM cache") if k != "__version__"]
    ids = [json.loads(line)["id"] for line in short_eval.read_text(encoding="utf-8").splitlines()[:2]]
    assert len(keys) == 2 and all(sum(f"{i}-E1" in k for k in keys) == 1 for i in ids), keys
    assert by["vllm-outlines"]["max_processes"] >= 2  # the engine core is a child process, counted in the RSS sum
    ratio = {(q["numerator"], q["denominator"], q["metric"]): q["value"] for q in doc["ratios"]}
    assert ratio[("vllm-outlines", "hf-outlines", "samples_s")] == pytest.approx(
        by["vllm-outlines"]["samples_s"] / by["hf-outlines"]["samples_s"], rel=0.01)
    pair = {(q["a"], q["b"]): q for q in doc["identical_outputs"]}
    assert pair[("hf-outlines", "vllm-outlines")]["compared"] == 1
