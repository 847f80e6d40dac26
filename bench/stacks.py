"""Where a pass's time goes: py-spy's raw (collapsed) stacks of the whole process tree (the front end, vLLM's
engine core and its CPU worker), read per function, and the constrained arm's profile against the
unconstrained one's (`evaluate constraint-cost --profile`). Pure apart from the two small helpers that find
and drive py-spy.

A raw line is ``frame;frame;...;frame COUNT``; with ``--subprocesses`` each stack starts with the processes
it runs in (``process 123:"VLLM::Worker"``). py-spy samples only threads that are running (not idle), so a
function's samples / the rate are CPU-active seconds spent in it or below it (its inclusive time, summed
over threads).
"""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_PROCESS = re.compile(r'^process \d+:"(?P<cmd>.*)"$', re.S)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_key(frame: str) -> str:
    """A frame as a function: ``func (file)`` without the line number; a process frame as ``[its name]``."""
    m = _PROCESS.match(frame)
    if m:
        cmd = m.group("cmd").split()
        name = cmd[0] if cmd else "?"
        if name.endswith(("python", "python3")) or "/python3" in name:
            name = " ".join(cmd[1:3]) or name  # python3 -m module / python3 script
        return f"[{name}]"
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for marker in ("site-packages/", "/work/"):  # shorter, stable paths
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m.group('func')} ({file})"


def parse_raw(text: str) -> list[tuple[list[str], int]]:
    """(frames, count) per stack. A process's command line may hold newlines: a stack's line ends with its count."""
    stacks: list[tuple[list[str], int]] = []
    buf = ""
    for line in text.splitlines():
        buf = f"{buf}\n{line}" if buf else line
        head, sep, count = buf.rpartition(" ")
        if sep and count.isdigit() and head.count('"') % 2 == 0:  # not inside a quoted command line
            frames = _split_frames(head)
            stacks.append((frames, int(count)))
            buf = ""
    return stacks


def _split_frames(head: str) -> list[str]:
    """Split on ';' outside a process frame's quoted command line."""
    frames, cur, quoted = [], [], False
    for ch in head:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            frames.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    frames.append("".join(cur))
    return frames


def inclusive(stacks: list[tuple[list[str], int]]) -> tuple[Counter, Counter, int]:
    """(inclusive samples per function: each function once per stack, self samples per function, total)."""
    inc: Counter = Counter()
    own: Counter = Counter()
    total = 0
    for frames, n in stacks:
        keys = [frame_key(f) for f in frames]
        total += n
        for k in set(keys):
            inc[k] += n
        if keys:
            own[keys[-1]] += n
    return inc, own, total


def compare(unconstrained: str, constrained: str, rate: int, top: int = 15) -> dict[str, Any]:
    """The two arms' profiles side by side, in CPU-active seconds (samples / rate): the totals, the functions whose
    inclusive time grew most under the constraint, and each arm's heaviest functions by self time."""
    u_inc, u_own, u_total = inclusive(parse_raw(unconstrained))
    c_inc, c_own, c_total = inclusive(parse_raw(constrained))
    sec = lambda n: round(n / rate, 2)  # noqa: E731
    grew = sorted(set(u_inc) | set(c_inc), key=lambda k: c_inc[k] - u_inc[k], reverse=True)[:top]
    return {
        "rate": rate,
        "cpu_s": {"unconstrained": sec(u_total), "constrained": sec(c_total)},
        "grew_most": [{"function": k, "unconstrained_s": sec(u_inc[k]), "constrained_s": sec(c_inc[k]),
                       "extra_s": sec(c_inc[k] - u_inc[k])} for k in grew],
        "self_top": {arm: [{"function": k, "self_s": sec(n), "share": round(n / total, 3) if total else None}
                           for k, n in own.most_common(top)]
                     for arm, own, total in (("unconstrained", u_own, u_total), ("constrained", c_own, c_total))},
    }


def py_spy() -> str | None:
    """py-spy's executable: on PATH or beside this Python (a virtual environment's bin/)."""
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else None


class Recording:
    """py-spy sampling this process and its children (without pausing them) until ``stop``, raw format."""

    def __init__(self, pid: int, path: Path, rate: int):
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
                                       "--rate", str(rate), "--format", "raw", "-o", str(path)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> str:
        """Stop sampling (py-spy writes its file on SIGINT); py-spy's last words."""
        self._proc.send_signal(signal.SIGINT)
        try:
            _, err = self._proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            _, err = self._proc.communicate()
        return err.decode("utf-8", "replace").strip().splitlines()[-1:][0] if err.strip() else ""
