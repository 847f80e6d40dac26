"""The machine a run's speed was measured on, for run.json's conditions: speeds are comparable only between
runs on the same kind of machine (evaluate.conditions)."""
from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def describe() -> dict[str, Any]:
    """CPU model (as lscpu's "Model name", with its family and model numbers), the CPUs this process may use,
    and the GPUs nvidia-smi lists."""
    cpu: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in cpu:
                    cpu[key] = value.strip()
                if not line.strip() and cpu:
                    break
    except OSError:
        pass
    name = cpu.get("model name") or "unknown CPU"
    if "cpu family" in cpu and "model" in cpu:
        name += f" (family {cpu['cpu family']} model {cpu['model']})"
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 0
    gpu = None
    if shutil.which("nvidia-smi"):  # not torch.cuda: it would open a CUDA context in this process
        try:
            names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                   text=True, timeout=10).stdout.split("\n")
            names = [n.strip() for n in names if n.strip()]
            gpu = f"{len(names)} x {names[0]}" if names else None
        except (OSError, subprocess.SubprocessError):
            gpu = None
    return {"cpu": name, "cpus": cpus, "gpu": gpu}
