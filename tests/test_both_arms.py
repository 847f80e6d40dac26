"""`evaluate batch --both` (issue 15): both arms on one engine, each an ordinary run directory. The real CLI on
Gemma 3 270M with the tiny adapter, two records."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from .conftest import EVAL, ROOT, check_contract

pytestmark = pytest.mark.engine

ENGINE_START = "Initializing a V1 LLM engine"


def _cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "patent_risk.cli.evaluate", "batch", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_both_arms_run_on_one_engine_and_refuse_before_it_starts(gemma_model, trained_adapter, tmp_path):
    out = tmp_path / "demo"
    common = ["--data", str(EVAL), "--limit", "2", "--model", str(gemma_model), "--adapter", f"tiny={trained_adapter}",
              "--max-model-len", "1024", "--no-progress"]
    done = _cli(*common, "--both", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    con, unc = tmp_path / "demo-constrained", tmp_path / "demo-unconstrained"
    for run_dir, constrained in ((con, True), (unc, False)):
        assert check_contract("run", run_dir).returncode == 0
        info = json.loads((run_dir / "run.json").read_text())
        assert info["constrained"] is constrained and info["finished_at"]
        rows = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and {r["finish_reason"] for r in rows} <= {"stop", "length"}
    # One engine start, logged where it started; the second arm's log points there.
    con_log, unc_log = (con / "engine.log").read_text(errors="replace"), (unc / "engine.log").read_text(errors="replace")
    assert con_log.count(ENGINE_START) == 1 and ENGINE_START not in unc_log
    assert f"shares the engine started for {con}" in unc_log
    assert done.stdout.index("constrained arm:") < done.stdout.index("unconstrained arm:")
    # Issue 33: the arms measured alike: the second arm's prefix cache emptied first, so that its prompts, which
    # the first arm left there, are prefilled again; each run says so.
    (c_con,), (c_unc,) = (json.loads((d / "run.json").read_text())["conditions"] for d in (con, unc))
    assert (c_con["prefix_cache"], c_con["shared_with"]) == ("empty (a fresh engine)", None), c_con
    assert (c_unc["prefix_cache"], c_unc["shared_with"]) == ("reset", str(con)), c_unc
    assert c_unc["prompt_tokens"] == c_con["prompt_tokens"] > 0
    assert c_unc["cached_prompt_tokens"] <= c_con["cached_prompt_tokens"] + 32  # not the first arm's whole prompts
    assert c_con["grammar_cache"] in ("cold", "warm") and c_unc["grammar_cache"] is None

    # The second arm is checked before any engine starts: with the constrained arm gone, --schema v2 is refused at
    # once because of the unconstrained arm's run.json, naming it.
    shutil.rmtree(con)
    t0 = time.perf_counter()
    refused = _cli(*common, "--both", "--schema", "v2", "--out", str(out), timeout=120)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert str(unc / "run.json") in refused.stderr and "schema" in refused.stderr
    assert not con.exists() or not (con / "engine.log").exists()
    assert time.perf_counter() - t0 < 60

    usage = _cli(*common, "--both", "--constrained", "--out", str(out), timeout=120)
    assert usage.returncode == 2 and "one of --constrained, --unconstrained or --both" in usage.stderr
