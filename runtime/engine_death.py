"""What to say when vLLM's engine-core process dies under a run: the exit signal or code, the kernel's OOM
kill where the system records one, and the last error line of the engine's log. Pure reading; the watching
is runtime.engines'."""
from __future__ import annotations

import re
import signal
from pathlib import Path

from patent_risk.schemas.errors import UserError

# cgroup v2, then v1: the kernel's count of processes its OOM killer has killed in this container
OOM_COUNTERS = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")
_ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL|Error|Exception|Killed|killed|out of memory|OOM)\b")


class EngineDied(UserError):
    """vLLM's engine core exited while this run needed it (during start-up or with requests in flight)."""


def oom_kills(paths: tuple[str, ...] = OOM_COUNTERS) -> int | None:
    """The kernel's OOM-kill count for this machine's memory cgroup (None where no counter can be read)."""
    for path in paths:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        m = re.search(r"^oom_kill (\d+)$", text, re.M)
        if m:
            return int(m.group(1))
    return None


def exit_cause(exitcode: int | None) -> str:
    """A process's exit in words: ``-9`` -> "killed by signal SIGKILL (9)", ``1`` -> "exited with code 1"."""
    if exitcode is None:
        return "exited (exit status unknown)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "signal"
        return f"killed by signal {name} ({-exitcode})"
    return f"exited with code {exitcode}"


def last_error_line(log: Path | None, skip: tuple[str, ...] = ("[shutdown]",)) -> str | None:
    """The last line of ``log`` that reads like an error (None: no log, or no such line). vLLM's own shutdown
    notices (``skip``) are left out: they follow a death, they do not explain it."""
    if log is None or not Path(log).is_file():
        return None
    try:
        lines = Path(log).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if _ERROR_LINE.search(line) and not any(s in line for s in skip):
            return line.strip()[:300]
    return None


def describe(procs: dict[str, int | None], oom_before: int | None, oom_after: int | None, when: str) -> str:
    """One line: which engine process died ``when``, how, and whether the kernel's OOM killer did it."""
    parts = [f"{name} {exit_cause(code)}" for name, code in procs.items()] or [
        "the engine core exited, and vLLM did not read its exit code (its start-up watch saw the process end before "
        "the exit status was there: vLLM says \"Failed core proc(s): {}\")"]
    line = f"vLLM's engine core died {when}: " + "; ".join(parts)
    if oom_before is not None and oom_after is not None and oom_after > oom_before:
        line += (f". The kernel's OOM killer killed {oom_after - oom_before} process(es) meanwhile (cgroup "
                 "memory.events): out of host memory; lower --chunk-size or --max-model-len, or free memory")
    elif any(code == -signal.SIGKILL for code in procs.values()):
        line += " (SIGKILL: the kernel's OOM killer, or someone, killed it; `dmesg` says which where you may read it)"
    return line


def with_log(err: EngineDied, log: Path | None, rows_written: int, total: int) -> EngineDied:
    """``err`` with the engine log's last error line and what the run kept, for the command's one message."""
    msg = str(err)
    line = last_error_line(log)
    if line:
        msg += f". Last error line in {log}: {line}"
    msg += (f". {rows_written} of {total} row(s) are in results.jsonl and kept; re-run the same command to resume"
            if total else "")
    return EngineDied(msg)
