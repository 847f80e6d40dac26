"""SIGKILL `evaluate batch` (the real CLI, offline vLLM engine) at chosen points and check what it
leaves: shared by the default-tier test (one kill) and the slow tier (a chain of kills)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from patent_risk.evaluate.batch import LOCK

from .conftest import ROOT, live_group_members


def batch_command(data: Path, out: Path, adapter: Path, limit: int, chunk: int, model: Path) -> list[str]:
    return [sys.executable, "-m", "patent_risk.cli.evaluate", "batch", "--data", str(data), "--out", str(out), "--constrained",
            "--model", str(model), "--adapter", f"tiny={adapter}", "--limit", str(limit), "--chunk-size", str(chunk),
            "--max-model-len", "1024", "--no-progress"]


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _holder(lock: Path) -> str | None:
    """The pid a run directory's lock file names, if it exists now."""
    try:
        return lock.read_text().strip()
    except FileNotFoundError:
        return None


@dataclass
class Kill:
    rows_before: int  # complete rows in results.jsonl when the kill landed
    bytes_before: bytes  # the file's content at the kill (complete rows and maybe a torn tail)
    how: str


@dataclass
class Chain:
    kills: list[Kill] = field(default_factory=list)
    final_rc: int | None = None
    final_log: str = ""


def run_and_kill(cmd: list[str], results: Path, rng: random.Random, limit: int, timeout: float = 600,
                 mode: str = "any", max_rows: int = 8,
                 while_locked: Callable[[subprocess.Popen], None] | None = None) -> Kill | None:
    """Start the CLI in its own process group (vLLM's engine core is a child process) and SIGKILL the
    whole group at a random point: either a random moment after start (maybe before the engine is up)
    or just after a random number of new rows. Returns None if the run finished first.
    `while_locked`, if given, is called once with the process as soon as the run directory's lock names
    it (before the kill point is looked for)."""
    start_rows = count_lines(results)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    if mode == "timed" or (mode == "any" and rng.random() < 0.3):
        how = "timed"
        deadline = time.monotonic() + rng.uniform(2.0, 40.0)
        cond = lambda: time.monotonic() >= deadline  # noqa: E731
    else:
        target = start_rows + rng.randint(1, max(1, min(max_rows, limit - start_rows - 1)))
        how = f"after row {target}"
        delay = rng.uniform(0.0, 1.5)
        cond = lambda: count_lines(results) >= target  # noqa: E731
    t_end = time.monotonic() + timeout
    lock = results.parent / LOCK
    try:
        while proc.poll() is None and time.monotonic() < t_end:
            if while_locked is not None and _holder(lock) == str(proc.pid):
                while_locked(proc)
                while_locked = None
                continue
            if cond():
                if how != "timed":
                    time.sleep(delay)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.05)
        else:
            if proc.poll() is None:
                raise TimeoutError(f"{cmd} ran past {timeout} s")
            return None  # finished before the kill point
    finally:
        if _alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    left = live_group_members(proc.pid)  # the engine core dies with the group
    assert left == [], f"processes of the killed group survived: {left}"
    content = results.read_bytes() if results.exists() else b""
    return Kill(rows_before=content.count(b"\n"), bytes_before=content, how=how)


def finish(cmd: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def rows_of(results: Path) -> list[dict]:
    return [json.loads(line) for line in results.read_bytes().decode("utf-8").splitlines()]


def complete_prefix(content: bytes) -> bytes:
    """The complete lines of a file as a kill left it (a torn tail is dropped by the repair)."""
    cut = content.rfind(b"\n")
    return content[: cut + 1] if cut >= 0 else b""


def compare(rows: list[dict], reference: list[dict]) -> dict:
    """Ids and outputs against an uninterrupted run of the same settings."""
    ids = [r["id"] for r in rows]
    ref = {r["id"]: r for r in reference}
    differing = [r["id"] for r in rows if r["id"] in ref and r["raw_output"] != ref[r["id"]]["raw_output"]]
    return {"rows": len(rows), "unique": len(set(ids)), "same_ids": sorted(ids) == sorted(ref),
            "duplicates": len(ids) - len(set(ids)), "differing_outputs": differing}
