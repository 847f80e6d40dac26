"""How an engine core's death is put in words (runtime.engine_death, runtime.engines._failed_procs): pure."""
from __future__ import annotations

from patent_risk.runtime import engine_death
from patent_risk.runtime.engine_death import EngineDied
from patent_risk.runtime.engines import _failed_procs


def test_exit_causes_name_the_signal_or_the_code():
    assert engine_death.exit_cause(-9) == "killed by signal SIGKILL (9)"
    assert engine_death.exit_cause(-15) == "killed by signal SIGTERM (15)"
    assert engine_death.exit_cause(1) == "exited with code 1"
    assert engine_death.exit_cause(None) == "exited (exit status unknown)"


def test_an_oom_kill_counted_by_the_cgroup_is_named_with_its_fix():
    line = engine_death.describe({"EngineCore_DP0": -9}, 3, 4, "while decoding")
    assert line.startswith("vLLM's engine core died while decoding: EngineCore_DP0 killed by signal SIGKILL (9)")
    assert "OOM killer killed 1 process(es)" in line and "--chunk-size" in line
    plain = engine_death.describe({"EngineCore_DP0": -9}, 3, 3, "while decoding")
    assert "OOM killer killed" not in plain and "dmesg" in plain
    assert "OOM" not in engine_death.describe({"EngineCore_DP0": 1}, None, None, "during start-up")


def test_oom_counter_read_from_cgroup_v2_or_v1_text(tmp_path):
    v2, v1 = tmp_path / "memory.events", tmp_path / "memory.oom_control"
    v2.write_text("low 0\nhigh 0\nmax 2\noom 1\noom_kill 5\noom_group_kill 0\n")
    v1.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n")
    assert engine_death.oom_kills((str(v2), str(v1))) == 5
    assert engine_death.oom_kills((str(tmp_path / "absent"), str(v1))) == 7
    assert engine_death.oom_kills((str(tmp_path / "absent"),)) is None


def test_the_logs_last_error_line_is_cited_and_shutdown_notices_are_not(tmp_path):
    log = tmp_path / "engine.log"
    log.write_text("INFO start\n(EngineCore pid=1) ERROR 12-06 [core.py:1] RuntimeError: CPU out of memory\n"
                   "(MainProcess) WARNING [shutdown] MPClient: engine core exited unexpectedly\nINFO done\n")
    err = engine_death.with_log(EngineDied("vLLM's engine core died while decoding: x"), log, 2, 6)
    assert "Last error line in" in str(err) and "CPU out of memory" in str(err) and "[shutdown]" not in str(err)
    assert str(err).endswith("2 of 6 row(s) are in results.jsonl and kept; re-run the same command to resume")
    assert engine_death.last_error_line(tmp_path / "none.log") is None


def test_vllms_start_up_failure_message_gives_the_exit_codes():
    msg = "Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore_DP0': -9}"
    assert _failed_procs(msg) == {"EngineCore_DP0": -9}
    assert _failed_procs("Engine core initialization failed. Failed core proc(s): {}") == {}
    assert _failed_procs("some other RuntimeError") is None


def test_the_memory_guard_warns_with_the_fix_only_when_the_indexes_would_not_fit():
    from patent_risk.runtime import memory_guard

    sizes = {"a": 500 * 2**20, "b": 300 * 2**20}
    warning = memory_guard.index_warning(sizes, available=512 * 2**20)
    assert warning.startswith("warning: the 2 distinct JSON schema(s)") and "880 MiB" in warning and "500 MiB" in warning
    assert "512 MiB is available" in warning and "--chunk-size" in warning and "v2" in warning and "--backend" in warning
    assert memory_guard.index_warning(sizes, available=2**30) is None
    assert memory_guard.index_warning(sizes, available=None) is None and memory_guard.index_warning({}, 1) is None
