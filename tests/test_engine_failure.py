"""Issue 14, constrained decoding on Gemma's vocabulary. A request that fails inside the engine is never
written as the model's answer: vLLM answers a request whose structured-outputs grammar did not compile in
time with empty text and finish_reason "error"; that used to become a row, scored as the model's parse
failure. The real CLI on Gemma 3 270M, with a one-second compile limit and a cold outlines cache, provokes
it. And a schema is compiled once: later runs find it in outlines' disk cache."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from patent_risk.evaluate.batch import BatchConfig, run_batch
from patent_risk.runtime.engines import ENGINE_FAILURE_REASONS
from patent_risk.runtime.requests import build_requests

from .conftest import EVAL, ROOT, Borrowed

pytestmark = pytest.mark.engine
# A line of vLLM's log, from this process or its engine core: "INFO 12-03 06:40:01 [x.py:1] ...".
VLLM_LINE = re.compile(r"^(\(\w+ pid=\d+\) )?(DEBUG|INFO|WARNING) \d\d-\d\d ")


ELEMENTS = 30  # outlines' index grows with the schema: about 0.2 s an element here (0.8 s for 3), so at least 1 s


def _slow_schemas(tmp_path, n: int):
    """n unlabelled records of ELEMENTS short elements each, with ids no schema was compiled for (1q, 2q, ...):
    schemas that take outlines well over the test's one-second limit on any machine (the eval split's own
    3-element schemas compiled in 0.8 s on a fast one, and the test then passed by itself)."""
    lines = []
    for i, line in enumerate(EVAL.read_text(encoding="utf-8").splitlines()[:n]):
        rec = json.loads(line)
        template = rec["elements"][0]
        rec["elements"] = [{**template, "id": f"{k}q", "text": f"성분 {k}"} for k in range(1, ELEMENTS + 1)]
        rec["label"] = None
        lines.append(json.dumps(rec, ensure_ascii=False))
    path = tmp_path / "slow.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_grammar_compile_timeout_stops_the_run_and_writes_no_row(gemma_model, trained_adapter, tmp_path):
    """Through the tiny adapter: vLLM's CPU build runs LoRA engines without torch.compile, which starts
    faster than the base model alone."""
    data, out = _slow_schemas(tmp_path, 2), tmp_path / "run"
    env = {**os.environ, "VLLM_REGEX_COMPILATION_TIMEOUT_S": "1", "OUTLINES_CACHE_DIR": str(tmp_path / "outlines")}
    cmd = [sys.executable, "-m", "patent_risk.cli.evaluate", "batch", "--data", str(data), "--out", str(out), "--constrained",
           "--model", str(gemma_model), "--adapter", f"tiny={trained_adapter}", "--max-model-len", "4096", "--chunk-size", "2", "--no-progress"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 2, done.stderr[-3000:]  # a UserError: one `error:` line, no traceback
    assert "Traceback" not in done.stderr.split("error: ")[-1]
    err = done.stderr
    assert "failed inside vLLM's offline engine (finish_reason error" in err, err[-3000:]
    assert "not as the model's answer: none of them was written to results.jsonl" in err
    assert "VLLM_REGEX_COMPILATION_TIMEOUT_S (this run: 1 s" in err and "re-run the same command" in err
    # vLLM's own log line, which the message points to, is in the run's engine.log, whose path and last lines the
    # terminal shows; none of vLLM's INFO/WARNING lines reach the terminal otherwise (issue 15).
    log = out / "engine.log"
    assert "Regex compilation timed out after 1s" in log.read_text(errors="replace")
    assert f"engine log: {log}" in err
    own = [ln for ln in (done.stdout + err).splitlines() if not ln.startswith("  | ")]
    assert not [ln for ln in own if VLLM_LINE.match(ln)], own
    results = out / "results.jsonl"
    rows = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    assert not [r for r in rows if r["finish_reason"] in ENGINE_FAILURE_REASONS or r.get("raw_output") == ""], rows
    assert json.loads((out / "run.json").read_text())["finished_at"] is None


def test_a_compiled_schema_is_stored_once_and_later_runs_compile_nothing(engine, eval_records, tmp_path):
    """Issue 14, compile once: a schema never seen before is compiled (by the offline engine's front end before the
    chunk is submitted, runtime/outlines_cache.precompile, under the key the engine core computes too) and its
    outlines index stored in the disk cache the engine's settings name (cpu_env.structured_outputs_env: artifacts/cache/
    outlines, the file `serve start`, a resumed run, a re-run and another adapter on this base open too); a
    second run of the same record, vLLM's prefix cache emptied, finds it there and compiles nothing: outlines'
    cache stores with INSERT OR REPLACE after every compile, so the row's rowid would change. On the shared
    Gemma engine: the vocabulary that makes compiling cost seconds."""
    import sqlite3
    import uuid

    from patent_risk.schemas.records import with_own_element_ids

    rec = with_own_element_ids(eval_records[2].model_copy(update={"id": f"cache-{uuid.uuid4().hex[:10]}"}))
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps(rec.to_json(), ensure_ascii=False) + "\n", encoding="utf-8")
    db = os.path.join(engine.description["env"]["OUTLINES_CACHE_DIR"], "outlines_cache.db")

    def stored() -> list[int]:
        with sqlite3.connect(db) as con:
            rows = con.execute("SELECT rowid, key FROM cache").fetchall()
        return [rowid for rowid, key in rows if f"{rec.id}-E1" in key.replace("\\", "")]

    ttft = []
    seen = engine.precompiled.get("compiled_or_found", 0)
    for run in ("first", "again"):
        engine.llm.reset_prefix_cache()
        cfg = BatchConfig(data=str(data), out=str(tmp_path / run), constrained=True, adapter=engine.adapter)
        run_batch(cfg, lambda m: Borrowed(engine), log=lambda s: None, progress=False)
        row = json.loads((tmp_path / run / "results.jsonl").read_text(encoding="utf-8"))
        assert row["finish_reason"] == "stop", row
        ttft.append(row["ttft_s"])
        assert engine.precompiled["compiled_or_found"] == seen + 1, engine.precompiled
        seen += 1
        if run == "first":
            first = stored()
            assert len(first) == 1, first  # compiled once, stored once
    assert stored() == first  # the same row: nothing compiled (or stored) again
    # ... and under a key every process computes alike (runtime/outlines_cache.py): this test process is not the
    # engine core that stored it, and a fresh tokenizer object holds no cached vocabulary
    from transformers import AutoTokenizer
    from vllm.v1.structured_output.utils import get_outlines_vocabulary

    key = str(get_outlines_vocabulary(AutoTokenizer.from_pretrained(engine.model_path))._hash)
    with sqlite3.connect(db) as con:
        (stored_key,) = con.execute("SELECT key FROM cache WHERE rowid = ?", (first[0],)).fetchone()
    assert stored_key.startswith(key + "_"), (stored_key[:80], key)
    print(f"time to first token: {ttft[0]:.2f} s with the compile, {ttft[1]:.2f} s from the cache")


def test_the_memory_guard_warns_before_a_chunk_whose_indexes_would_not_fit(engine, eval_records, monkeypatch, capsys):
    """The outlines indexes of a chunk's distinct schemas are measured in the compiled cache before it is submitted;
    with less memory available than they need (faked here: 1 KiB), one warning says so with the fix, and the
    chunk still decodes."""
    from patent_risk.runtime import memory_guard

    monkeypatch.setattr(memory_guard, "available_bytes", lambda: 2**10)
    monkeypatch.setattr(engine, "_memory_warned", False)
    reqs = build_requests(eval_records[:2], "v1", True, engine.count_tokens)
    results = engine.generate(reqs)
    err = capsys.readouterr().err
    assert err.count("warning: the ") == 1 and "distinct JSON schema(s) decoded together" in err, err
    assert "1 KiB is available" in err and "--chunk-size" in err
    assert [r.record_id for r in results] == [r.record_id for r in reqs]
    engine.generate(reqs)
    assert "warning: the " not in capsys.readouterr().err  # once per engine
