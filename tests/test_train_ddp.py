"""Training data-parallel under `torchrun` (README, "Scaling out"), on the CPU with two processes (gloo): the
trainer's own code runs wrapped in DistributedDataParallel, the first process alone speaks and writes the
adapter. Slow tier: two processes load the model and train 2 steps (about 45 s here)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import TINY_RECIPE, TRAIN


@pytest.mark.slow
def test_torchrun_two_processes_train_one_adapter(tmp_path, embedded_model):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "patent_risk", "train", "qlora",
           "-s", f"base_model={embedded_model}", "-s", f"train_data={TRAIN}", "-s", "limit=16",
           "-s", "eval_fraction=0.0", "-s", f"output_dir={out}", "-s", "save_steps=1000",
           *[a for kv in TINY_RECIPE for a in ("-s", kv)], "-s", "max_steps=2", "-s", "per_device_batch=2",
           "-s", "grad_accum=1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines.count(str(out)) == 1, lines  # one adapter path: the first process's
    assert sum("adapter written to" in line for line in lines) == 1, lines
    assert (out / "adapter_model.safetensors").exists() and not out.with_name(out.name + ".part").exists()
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["results"]["steps"] == 2
