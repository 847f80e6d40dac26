"""vLLM's engine-core process killed under a real `evaluate batch` (issue 31): the command stops within seconds
with one message naming the engine's death, keeps every row written before it, frees the run's lock, and the
same settings resume to the full set with no duplicate row. Killed mid-run (after a row) and before the first
answer (at start-up). The resumes run on the suite's shared engine; each killed run is an engine start of its own.
The slow tier kills one under `evaluate bench` (that configuration fails, the others run) and `evaluate curve`
(finished points kept, the curve resumes)."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from patent_risk.evaluate.batch import LOCK, BatchConfig, run_batch

from .conftest import ROOT, Borrowed
from .interrupt import batch_command, complete_prefix, rows_of

pytestmark = pytest.mark.engine
LIMIT, CHUNK = 6, 2


def engine_core(pid: int, timeout: float = 300.0) -> psutil.Process:
    """The `VLLM::EngineCore` process under ``pid``, once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for child in psutil.Process(pid).children(recursive=True):
                try:
                    if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                        return child
                except psutil.NoSuchProcess:
                    continue
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    raise AssertionError(f"no engine-core process appeared under pid {pid} in {timeout} s")


def lock_is_free(run_dir: Path) -> bool:
    fd = os.open(run_dir / LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def kill_and_wait(proc: subprocess.Popen, core: psutil.Process, log: Path) -> tuple[float, str]:
    core.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    try:
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"`evaluate batch` still running 180 s after its engine core was killed: {log.read_text()[-2000:]}")
    return time.monotonic() - t0, log.read_text(encoding="utf-8", errors="replace")


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as fh:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def resume(engine, data: Path, out: Path) -> list[dict]:
    """The same settings as batch_command, on the shared engine: the killed run resumed."""
    cfg = BatchConfig(data=str(data), out=str(out), constrained=True, model=engine.model_path, adapter=engine.adapter,
                      limit=LIMIT, chunk_size=CHUNK, max_model_len=1024)
    run_batch(cfg, lambda m: Borrowed(engine), log=lambda s: None, progress=False)
    rows = rows_of(out / "results.jsonl")
    assert len(rows) == LIMIT and len({r["id"] for r in rows}) == LIMIT, [r["id"] for r in rows]
    return rows


def _assert_named(message: str, at_start_up: bool = False) -> None:
    # At start-up vLLM's own watch may see the process end before its exit status can be read and report
    # "Failed core proc(s): {}" (seen once in four fresh-clone suites, 2026-12-07): then that is what is said.
    unread = at_start_up and "vLLM did not read its exit code" in message
    assert "engine core died" in message and ("SIGKILL" in message or unread), message[-3000:]
    assert "Traceback" not in message, message[-3000:]  # one message, not a stack


def test_engine_core_killed_after_a_row_stops_the_run_keeps_its_rows_and_resumes(engine, short_eval, tmp_path):
    out, log = tmp_path / "run", tmp_path / "batch.log"
    results = out / "results.jsonl"
    proc = start(batch_command(short_eval, out, Path(engine.adapter.path), LIMIT, CHUNK, Path(engine.model_path)), log)
    core = engine_core(proc.pid)
    deadline = time.monotonic() + 600
    while not (results.exists() and results.read_bytes().count(b"\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    before = results.read_bytes()
    seconds, message = kill_and_wait(proc, core, log)
    written = before.count(b"\n")
    print(f"\nexit {seconds:.1f} s after the engine core's SIGKILL, {written} row(s) written before it")

    assert proc.returncode not in (0, None)
    _assert_named(message)
    assert "while decoding" in message and "re-run the same command to resume" in message, message[-3000:]
    kept = complete_prefix(before)
    assert kept and results.read_bytes().startswith(kept)  # rows written before the kill, byte for byte
    assert 1 <= len(rows_of(results)) < LIMIT
    assert lock_is_free(out)
    assert json.loads((out / "run.json").read_text())["finished_at"] is None  # the run says it did not finish

    resume(engine, short_eval, out)
    assert results.read_bytes().startswith(kept)


def test_engine_core_killed_at_start_up_stops_the_run_with_no_row_and_resumes(engine, short_eval, tmp_path):
    out, log = tmp_path / "run", tmp_path / "batch.log"
    proc = start(batch_command(short_eval, out, Path(engine.adapter.path), LIMIT, CHUNK, Path(engine.model_path)), log)
    core = engine_core(proc.pid)
    seconds, message = kill_and_wait(proc, core, log)
    print(f"\nexit {seconds:.1f} s after the engine core's SIGKILL at start-up")

    assert proc.returncode not in (0, None)
    _assert_named(message, at_start_up=True)
    results = out / "results.jsonl"
    assert not results.exists() or results.read_bytes() == b""
    assert lock_is_free(out)
    resume(engine, short_eval, out)


def _core_under(marker: str, timeout: float = 300.0) -> psutil.Process:
    """The engine-core process descended from this test's child whose command line holds ``marker``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process().children(recursive=True):
            try:
                if marker in " ".join(child.cmdline()):
                    return engine_core(child.pid, timeout=max(1.0, deadline - time.monotonic()))
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no process running {marker!r} appeared in {timeout} s")


@pytest.mark.slow
def test_engine_core_killed_in_a_bench_worker_fails_that_configuration_and_the_bench_goes_on(
        smollm2_model, smollm2_adapter, short_eval, tmp_path):
    import threading

    from patent_risk.bench.offline import run_bench
    from patent_risk.bench.offline_configs import BenchOptions

    out = tmp_path / "bench"
    opts = BenchOptions(data=str(short_eval), adapter_name="tiny", adapter_path=str(smollm2_adapter), model=str(smollm2_model),
                        configs=("vllm", "hf"), limit=4, hf_limit=1, batch_size=4, out=str(out), max_model_len=1024,
                        hf_threads=1)
    done: dict = {}
    bench = threading.Thread(target=lambda: done.update(doc=run_bench(opts, log=lambda s: None)), daemon=True)
    bench.start()
    core = _core_under("--config vllm")
    phase = out / "workers" / "vllm.result.json.phase"
    deadline = time.monotonic() + 300
    while not (phase.exists() and phase.read_text() == "gen"):
        assert bench.is_alive() and time.monotonic() < deadline
        time.sleep(0.02)
    core.send_signal(signal.SIGKILL)
    bench.join(timeout=600)
    assert not bench.is_alive(), "the bench hung after its worker's engine core was killed"
    by = {r["config"]: r for r in done["doc"]["runs"]}
    assert by["vllm"]["status"] == "failed" and "engine core died" in by["vllm"]["error"], by["vllm"]
    assert by["hf"]["status"] == "ok", by["hf"].get("log_tail")
    assert "FAILED" in (out / "bench.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_engine_core_killed_during_a_curve_keeps_the_finished_points_and_resumes(engine, trained_adapter, short_eval, tmp_path):
    import sys

    from patent_risk.evaluate.curve import Checkpoint, checkpoints, evaluate_points

    data = tmp_path / "dev.jsonl"
    data.write_text("".join(short_eval.read_text(encoding="utf-8").splitlines(keepends=True)[:4]), encoding="utf-8")
    out, log = tmp_path / "curve", tmp_path / "curve.log"
    cmd = [sys.executable, "-m", "patent_risk.cli.evaluate", "curve", f"tiny={trained_adapter}", "--data", str(data),
           "--out", str(out), "--model", engine.model_path, "--chunk-size", "2", "--no-progress"]
    proc = start(cmd, log)
    core = engine_core(proc.pid)
    first = out / "runs" / "base" / "run.json"
    deadline = time.monotonic() + 600
    while not (first.exists() and json.loads(first.read_text() or "{}").get("finished_at")):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    base_rows = (first.parent / "results.jsonl").read_bytes()
    seconds, message = kill_and_wait(proc, core, log)
    print(f"\ncurve: exit {seconds:.1f} s after the engine core's SIGKILL")

    assert proc.returncode not in (0, None)
    _assert_named(message)
    assert "finished point(s) are kept" in message, message[-3000:]
    assert (first.parent / "results.jsonl").read_bytes() == base_rows and base_rows.count(b"\n") == 4
    assert all(lock_is_free(d) for d in (out / "runs").iterdir())

    first_adapter = engine.adapter
    points = [Checkpoint("base", 0, 0.0, None, True), *checkpoints("tiny", trained_adapter)]

    def make(model_path, spec):
        engine.use_adapter(spec)
        return Borrowed(engine)

    try:
        scored = evaluate_points(points, str(data), out, make, chunk_size=2, max_model_len=1024, log=lambda s: None,
                                 progress=False, quiet=False)
    finally:
        engine.use_adapter(first_adapter)
    assert [p.n for p in scored] == [4, 4, 4]
    assert (first.parent / "results.jsonl").read_bytes() == base_rows  # the finished point was not decoded again
