"""Process measurement with psutil: a process tree's memory (PSS) and CPU time, the machine's CPU use, and
whether a recorded pid is still the process that was recorded (pid reuse).

PSS (proportional set size) divides each shared page among the processes that map it, so the PSS of a process
tree counts the model weights and libraries that vLLM's engine core shares with its parent once; summed RSS
counted them once per process.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil

SAMPLE_INTERVAL_S = 0.2


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its live descendants (zombies left out: they hold no memory or CPU); [] when ``pid`` is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def pss_bytes(procs: list[psutil.Process]) -> int:
    """Summed proportional set size; a process that exits between listing and reading counts 0, and one whose
    smaps cannot be read (another user's) counts its RSS."""
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except psutil.AccessDenied:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        except psutil.Error:
            pass
    return total


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """User + system CPU seconds the given processes have used."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (all but idle and iowait)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def create_time(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), None when there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def same_process(pid: int, started: float | None) -> bool:
    """True when ``pid`` is alive (not a zombie) and, where ``started`` is known, is the process that started
    then (psutil's create_time, to 0.01 s): a pid the system gave to another process after ours exited is not."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(p.create_time() - started) < 0.01
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return started is None


class CpuWindow:
    """Contention indicator over a timed window: CPU other processes used per wall second (0 on a quiet
    machine; up to the core count when every core was taken by others)."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._busy0 = machine_busy_seconds()
        self._own0 = cpu_seconds(tree(self._pid))
        self._load0 = os.getloadavg()[0]
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._t0
        own = cpu_seconds(tree(self._pid)) - self._own0
        busy1 = machine_busy_seconds()
        out: dict[str, Any] = {"own_cpu_per_wall": round(own / wall, 3) if wall else None,
                               "loadavg_1m": [round(self._load0, 2), round(os.getloadavg()[0], 2)]}
        if wall:
            out["others_cpu_per_wall"] = round(max(0.0, (busy1 - self._busy0 - own) / wall), 3)
        return out


class TreeMemorySampler:
    """Samples the PSS of a process tree every ``interval`` s in a thread; keeps the peak, and the peak while
    the phase file (a worker's) says ``gen``."""

    def __init__(self, pid: int, phase_path: Path | None = None, interval: float = SAMPLE_INTERVAL_S):
        self.pid, self.phase_path, self.interval = pid, phase_path, interval
        self.peak = 0
        self.peak_gen = 0
        self.samples = 0
        self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _phase(self) -> str:
        if self.phase_path is None:
            return ""
        try:
            return self.phase_path.read_text().strip()
        except OSError:
            return ""

    def _run(self) -> None:
        while not self._stop.is_set():
            procs = tree(self.pid)
            pss = pss_bytes(procs)
            self.samples += 1
            self.max_processes = max(self.max_processes, len(procs))
            self.peak = max(self.peak, pss)
            if self._phase() == "gen":
                self.peak_gen = max(self.peak_gen, pss)
            self._stop.wait(self.interval)
