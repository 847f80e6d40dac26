"""A run directory is a record a reviewer can trust (issue 12): a finished run refuses other settings
before any engine starts, a moved adapter resumes, per-row latency, and `make demo` clears runs of
another adapter. The real engine and the real CLI. One writer at a time: test_interrupt, whose killed
run is the first writer."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from patent_risk.evaluate.batch import BatchConfig, run_batch
from patent_risk.runtime.engines import AdapterSpec
from patent_risk.runtime.requests import build_requests
from patent_risk.schemas.errors import UserError

from .conftest import EVAL, ROOT, Borrowed

pytestmark = pytest.mark.engine


def _no_engine(model_path):
    pytest.fail("an engine was started although the run directory's settings differ")


def _changed_adapter(trained_adapter, tmp_path):
    """A copy of the adapter whose content differs (another dropout in its config): another adapter."""
    other = tmp_path / "other-adapter"
    shutil.copytree(trained_adapter, other)
    cfg_path = other / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["lora_dropout"] = round(float(cfg.get("lora_dropout") or 0.0) + 0.01, 4)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return other


@pytest.fixture(scope="module")
def finished_run(engine, tmp_path_factory):
    """A finished constrained run of 2 samples."""
    out = tmp_path_factory.mktemp("finished") / "run"
    cfg = BatchConfig(data=str(EVAL), out=str(out), constrained=True, adapter=engine.adapter, limit=2, chunk_size=2)
    run_batch(cfg, lambda m: Borrowed(engine), log=lambda s: None, progress=False)
    return cfg


def _cfg(base: BatchConfig, **over) -> BatchConfig:
    fields = {k: getattr(base, k) for k in ("data", "out", "constrained", "model", "adapter", "schema_name", "backend",
                                           "server", "limit", "chunk_size", "max_model_len", "merged", "seed")}
    return BatchConfig(**{**fields, **over})


@pytest.mark.parametrize("change, named", [
    ({"constrained": False}, "constrained: true -> false"),
    ({"schema_name": "v2"}, 'schema.name: "v1" -> "v2"'),
    ({"backend": "xgrammar"}, 'backend: "outlines" -> "xgrammar"'),
    ({"merged": True}, 'adapter_mode: "lora" -> "merged"'),
    ({"seed": 3}, "sampling.seed: 0 -> 3"),
    ({"label_probs": False}, "label_probs: true -> false (this run's rows were written with label probabilities"),
])
def test_finished_run_refuses_other_settings_before_any_engine(finished_run, change, named):
    """Item 1: a finished run directory used to say "nothing left to do" and exit 0 whatever the settings."""
    with pytest.raises(UserError, match="made with other settings") as e:
        run_batch(_cfg(finished_run, **change), _no_engine, log=lambda s: None, progress=False)
    assert named in str(e.value)


def test_finished_run_refuses_another_adapters_content(finished_run, trained_adapter, tmp_path):
    other = _changed_adapter(trained_adapter, tmp_path)
    with pytest.raises(UserError, match=r"adapter: \"[0-9a-f]{64}\" -> \"[0-9a-f]{64}\""):
        run_batch(_cfg(finished_run, adapter=AdapterSpec("tiny", str(other))), _no_engine, log=lambda s: None,
                  progress=False)


def test_finished_run_with_the_same_settings_needs_no_engine(finished_run):
    summary = run_batch(_cfg(finished_run), _no_engine, log=lambda s: None, progress=False)
    assert summary.generated == 0 and summary.done_before == 2


def test_moved_adapter_resumes(engine, trained_adapter, tmp_path):
    """Item 2: the adapter's identity is its content, not its path."""
    out = tmp_path / "run"
    cfg = BatchConfig(data=str(EVAL), out=str(out), constrained=True, adapter=engine.adapter, limit=2, chunk_size=2)
    run_batch(cfg, lambda m: Borrowed(engine), log=lambda s: None, progress=False)
    moved = tmp_path / "moved" / "tiny"
    shutil.copytree(trained_adapter, moved)
    summary = run_batch(_cfg(cfg, adapter=AdapterSpec("tiny", str(moved)), limit=4), lambda m: Borrowed(engine),
                        log=lambda s: None, progress=False)
    assert (summary.done_before, summary.generated) == (2, 2)
    info = json.loads((out / "run.json").read_text())
    assert info["adapter"]["path"] == str(moved) and len(info["resumed_at"]) == 1


def test_cli_refusal_comes_in_seconds_naming_each_field(finished_run, trained_adapter, tmp_path):
    """The real CLI into a finished run directory with two settings changed: non-zero exit, both fields
    named, long before an engine could have started (engine start on this model: tens of seconds)."""
    other = _changed_adapter(trained_adapter, tmp_path)
    cmd = [sys.executable, "-m", "patent_risk.cli.evaluate", "batch", "--data", str(EVAL), "--out", finished_run.out,
           "--unconstrained", "--adapter", f"tiny={other}", "--limit", "2", "--no-progress"]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - t0
    print(f"refusal after {elapsed:.1f} s")
    assert done.returncode != 0
    assert "constrained: true -> false" in done.stderr and "adapter: " in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert "Initializing" not in done.stdout + done.stderr  # vLLM's engine never began to start


def test_each_row_has_its_own_latency(engine, eval_records):
    """Item 8: offline, a row's latency_s is its own request's (vLLM's per-request stats), not the chunk's. The
    requests end at different steps (max_tokens 4, 8, 12, 16: a JSON answer is longer), so their own latencies
    differ; with one budget for all, four prompts prefilled in one step finish together and can tie."""
    reqs = [r.__class__(r.record_id, r.messages, 4 * (i + 1), None)
            for i, r in enumerate(build_requests(eval_records[:4], "v1", False, engine.count_tokens))]
    t0 = time.perf_counter()
    results = engine.generate(reqs)
    wall = time.perf_counter() - t0
    for r in results:
        assert r.latency_s is not None and 0 < r.latency_s <= wall + 0.05, r
        assert r.ttft_s is not None and 0 < r.ttft_s <= r.latency_s
    assert len({r.latency_s for r in results}) > 1, [r.latency_s for r in results]


def test_demo_clears_runs_of_another_adapter(engine, trained_adapter, tmp_path, capsys):
    """`make demo` after the adapter changed (the demo config was edited and it retrained): its run
    directories of the old adapter are cleared with a line saying so; those of the current one are kept."""
    from patent_risk.cli import demo

    out = tmp_path / "demo-constrained"
    cfg = BatchConfig(data=str(EVAL), out=str(out), constrained=True, adapter=engine.adapter, limit=2, chunk_size=2)
    run_batch(cfg, lambda m: Borrowed(engine), log=lambda s: None, progress=False)
    demo.clear_if_stale(out, True, trained_adapter)
    assert (out / "results.jsonl").exists()
    demo.clear_if_stale(out, True, _changed_adapter(trained_adapter, tmp_path))
    assert not out.exists()
    said = capsys.readouterr().out
    assert "made with other settings (adapter: " in said and "cleared for a fresh run" in said
