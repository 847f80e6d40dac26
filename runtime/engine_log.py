"""Where an engine's own output goes: a log file in the run directory by default, the terminal on request.

vLLM writes a few hundred lines per engine start (its INFO and WARNING log, from this process and from the
engine-core process it starts, C-level messages, Python warnings) that bury what a user came for. Inside
``engine_output(path)``:

- file descriptors 1 and 2 of this process point at ``path`` (appended), and so do those of every process it
  starts: vLLM's engine core and workers inherit them;
- vLLM's loggers are configured (through ``VLLM_LOGGING_STREAM``, read by every vLLM process when it first
  imports vLLM) to write to the interpreter's original stdout, which is descriptor 1, hence the file;
- ``sys.stdout`` and ``sys.stderr`` (click's output, progress bars, the tool's own warnings) keep writing to
  the terminal through copies of the original descriptors; Python warnings, and log records of loggers that
  have no handler yet (logging's last resort: vLLM logs its Triton check before it configures its loggers),
  go to the file;
- if the block fails, the log's last lines are shown on the terminal with its path, so the cause is never
  hidden.

``engine_output(None)`` changes nothing (``--verbose``: everything on the terminal, as before).
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ENGINE_LOG = "engine.log"
TAIL_LINES = 25
VLLM_STREAM = "ext://sys.__stdout__"


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a text file (at most its last 64 KiB), [] if it is missing."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [ln.rstrip("\r") for ln in text.splitlines()[-lines:]]


@contextmanager
def engine_output(path: Path | None) -> Iterator[Path | None]:
    """Send the engine's output to ``path`` (see the module's docstring) while the block runs; yields it."""
    if path is None:
        yield None
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    old_streams = sys.stdout, sys.stderr
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    terminal_out = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding=encoding, errors="replace")
    terminal_err = os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding=encoding, errors="replace")
    old_env = os.environ.get("VLLM_LOGGING_STREAM")
    old_showwarning = warnings.showwarning
    old_last_resort = logging.lastResort

    def to_log(message, category, filename, lineno, file=None, line=None):
        old_showwarning(message, category, filename, lineno, file=sys.__stderr__, line=line)

    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    sys.stdout, sys.stderr = terminal_out, terminal_err
    if old_env is None:
        os.environ["VLLM_LOGGING_STREAM"] = VLLM_STREAM
    warnings.showwarning = to_log
    last_resort = logging.StreamHandler(sys.__stderr__)
    last_resort.setLevel(logging.WARNING)
    logging.lastResort = last_resort
    failed = False
    try:
        yield path
    except Exception:
        failed = True
        raise
    finally:
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        warnings.showwarning = old_showwarning
        logging.lastResort = old_last_resort
        if old_env is None:
            os.environ.pop("VLLM_LOGGING_STREAM", None)
        terminal_out.flush()
        terminal_err.flush()
        sys.stdout, sys.stderr = old_streams
        os.dup2(saved[1], 1)
        os.dup2(saved[2], 2)
        for fd in (*saved.values(), log_fd):
            os.close(fd)
        terminal_out.close()
        terminal_err.close()
        if failed:
            last = tail(path)
            print(f"engine log: {path} (its last {len(last)} lines):", file=sys.stderr)
            for ln in last:
                print(f"  | {ln}", file=sys.stderr)
            sys.stderr.flush()
