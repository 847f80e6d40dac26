"""Issue 14: a request that fails inside the engine is never written as the model's answer. vLLM answers a
request whose structured-outputs grammar did not compile in time with empty text and finish_reason
"error"; that used to become a row, scored as the model's parse failure. The real CLI on Gemma 3 270M,
with a one-second compile limit and a cold outlines cache, provokes it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from evaluate.engines import ENGINE_FAILURE_REASONS

from .conftest import EVAL, ROOT

pytestmark = pytest.mark.engine


def _fresh_ids(tmp_path, n: int):
    """The first n eval records with element ids no schema was compiled for (1a, 1b, ...: users' own style)."""
    lines = []
    for i, line in enumerate(EVAL.read_text(encoding="utf-8").splitlines()[:n]):
        rec = json.loads(line)
        rename = {e["id"]: f"{i + 7}{chr(ord('a') + k)}" for k, e in enumerate(rec["elements"])}
        for e in rec["elements"]:
            e["id"] = rename[e["id"]]
        for m in rec["label"]["matches"]:
            m["element_id"] = rename[m["element_id"]]
        lines.append(json.dumps(rec, ensure_ascii=False))
    path = tmp_path / "fresh.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_grammar_compile_timeout_stops_the_run_and_writes_no_row(gemma_model, trained_adapter, tmp_path):
    """Through the tiny adapter: vLLM's CPU build runs LoRA engines without torch.compile, which starts
    faster than the base model alone."""
    data, out = _fresh_ids(tmp_path, 2), tmp_path / "run"
    env = {**os.environ, "VLLM_REGEX_COMPILATION_TIMEOUT_S": "1", "OUTLINES_CACHE_DIR": str(tmp_path / "outlines")}
    cmd = [sys.executable, "-m", "evaluate.cli", "batch", "--data", str(data), "--out", str(out), "--constrained",
           "--model", str(gemma_model), "--adapter", f"tiny={trained_adapter}", "--max-model-len", "1024", "--no-progress"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 2, done.stderr[-3000:]  # a UserError: one `error:` line, no traceback
    assert "Traceback" not in done.stderr.split("error: ")[-1]
    err = done.stderr
    assert "failed inside vLLM's offline engine (finish_reason error" in err, err[-3000:]
    assert "not as the model's answer: none of them was written to results.jsonl" in err
    assert "VLLM_REGEX_COMPILATION_TIMEOUT_S (this run: 1 s" in err and "re-run the same command" in err
    assert "Regex compilation timed out after 1s" in done.stdout + err  # vLLM's own log line, which the message points to
    results = out / "results.jsonl"
    rows = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    assert not [r for r in rows if r["finish_reason"] in ENGINE_FAILURE_REASONS or r.get("raw_output") == ""], rows
    assert json.loads((out / "run.json").read_text())["finished_at"] is None
