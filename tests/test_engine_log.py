"""runtime.engine_log: what a newcomer reads (issue 15). Inside engine_output(path), everything an engine writes
(its log through VLLM_LOGGING_STREAM, raw writes to descriptors 1 and 2, child processes, Python warnings) goes to
the file, while the tool's own lines (sys.stdout, sys.stderr: click, progress bars) reach the terminal; a failure
shows the log's last lines. Each in a fresh interpreter, as the CLI runs it."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from .conftest import ROOT

SCRIPT = textwrap.dedent('''
    import logging.config, os, subprocess, sys, warnings
    from pathlib import Path
    from patent_risk.runtime.engine_log import engine_output

    log = Path(sys.argv[1])
    fail = sys.argv[2] == "fail"
    print("before: terminal", flush=True)
    try:
        with engine_output(log):
            # what vLLM's logging config does in each of its processes, with the stream the context sets
            logging.config.dictConfig({"version": 1, "handlers": {"h": {"class": "logging.StreamHandler",
                "stream": os.environ["VLLM_LOGGING_STREAM"]}}, "loggers": {"eng": {"handlers": ["h"], "level": "INFO"}}})
            logging.getLogger("eng").info("INFO engine log line")
            logging.getLogger("unconfigured.lib").warning("a warning before any logging config")
            os.write(1, b"raw fd1 line\\n")
            os.write(2, b"raw fd2 line\\n")
            subprocess.run([sys.executable, "-c", "import sys; print('child stdout line'); print('child stderr line', file=sys.stderr)"])
            warnings.warn("a library warning")
            print("tool line: terminal", flush=True)
            print("tool warning: terminal", file=sys.stderr, flush=True)
            if fail:
                raise RuntimeError("engine died")
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
    print("after: terminal", flush=True)
    os.write(1, b"after raw: terminal\\n")
''')

ENGINE_LINES = ("INFO engine log line", "a warning before any logging config", "raw fd1 line", "raw fd2 line", "child stdout line", "child stderr line",
                "a library warning")


def _run(tmp_path, mode: str):
    log = tmp_path / "engine.log"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(log), mode], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done, log.read_text()


def test_engine_output_goes_to_the_file_and_the_tools_lines_to_the_terminal(tmp_path):
    done, log = _run(tmp_path, "ok")
    terminal = done.stdout + done.stderr
    for line in ENGINE_LINES:
        assert line in log and line not in terminal, line
    for line in ("before: terminal", "tool line: terminal", "tool warning: terminal", "after: terminal",
                 "after raw: terminal"):
        assert line in terminal and line not in log, line
    assert "engine log:" not in terminal  # the tail is shown only on failure


def test_a_failure_shows_the_logs_last_lines_and_its_path(tmp_path):
    done, log = _run(tmp_path, "fail")
    err = done.stderr
    assert f"engine log: {tmp_path / 'engine.log'}" in err
    assert "  | INFO engine log line" in err and "  | child stderr line" in err
    assert err.index("engine log:") < err.index("error: engine died")
    assert "after: terminal" in done.stdout
