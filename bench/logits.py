"""`patent-risk train bench-logits`: the same training run twice, full logits against labelled positions only.

Each arm is `patent-risk train qlora` in its own process (so that its peak RSS is its own), one after the other,
with the same config, data, seed and steps; only ``labelled_logits`` differs. Reported per arm: tokens/s
and seconds of the training loop, the process's peak RSS, the logged train losses and the final eval
loss; between the arms, the largest difference of the losses logged at the same step.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from patent_risk.schemas.errors import UserError

ARMS = (("full", False), ("labelled", True))


def _arm(name: str, labelled: bool, config: str | None, overrides: tuple[str, ...], steps: int, out: Path,
         log: Callable[[str], None]) -> dict[str, Any]:
    adapter = out / f"adapter-{name}"
    argv = [sys.executable, "-m", "patent_risk.cli.train", "qlora", *(["--config", config] if config else []), *sum((["-s", o] for o in overrides), []),
            "-s", f"max_steps={steps}", "-s", f"save_steps={steps + 1}", "-s", f"labelled_logits={str(labelled).lower()}",
            "-s", f"output_dir={adapter}"]
    log(f"[bench-logits] {name}: {' '.join(argv[1:])}")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w", encoding="utf-8") as fh:
        rc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = (out / f"{name}.log").read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise UserError(f"the {name} arm failed (exit {rc}); log {out / f'{name}.log'}:\n  " + "\n  ".join(tail))
    manifest = json.loads((adapter / "manifest.json").read_text(encoding="utf-8"))
    res = manifest["results"]
    losses = {h["step"]: h["loss"] for h in res["log_history"] if "loss" in h}
    row = {"arm": name, "labelled_logits": labelled, "steps": res["steps"], "train_seconds": res["seconds"],
           "tokens_seen": res["tokens_seen"], "tokens_per_second": res["tokens_per_second"],
           "peak_rss_mb": res["peak_rss_mb"], "train_loss": res["train_loss"], "eval_loss": res["eval_loss"],
           "logged_losses": losses, "process_wall_s": round(wall, 1),
           "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    log(f"[bench-logits] {name}: {row['tokens_per_second']} tok/s, {row['train_seconds']} s, peak RSS "
        f"{row['peak_rss_mb']:.0f} MB, train loss {row['train_loss']:.5f}, eval loss {row['eval_loss']}")
    return row


def run(config: str | None, overrides: tuple[str, ...], steps: int, out: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    if steps < 1:
        raise UserError("--steps must be at least 1")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [_arm(name, labelled, config, overrides, steps, out_dir, log) for name, labelled in ARMS]
    full, lab = rows
    common = sorted(set(full["logged_losses"]) & set(lab["logged_losses"]))
    doc = {
        "config": config or "train/configs/demo.yaml", "overrides": list(overrides), "steps": steps,
        "cpu_count": os.cpu_count(), "arms": rows,
        "labelled_over_full": {
            "tokens_per_second": round(lab["tokens_per_second"] / full["tokens_per_second"], 3),
            "train_seconds": round(lab["train_seconds"] / full["train_seconds"], 3),
            "peak_rss_mb": round(lab["peak_rss_mb"] / full["peak_rss_mb"], 3)},
        "loss_difference": {
            "max_abs_logged": max((abs(full["logged_losses"][s] - lab["logged_losses"][s]) for s in common), default=None),
            "train_loss": abs(full["train_loss"] - lab["train_loss"]),
            "eval_loss": (abs(full["eval_loss"] - lab["eval_loss"])
                          if full["eval_loss"] is not None and lab["eval_loss"] is not None else None),
            "logged_steps": common},
        "notes": ["Both arms: the same config, data, seed and steps, one process each, one after the other; only "
                  "labelled_logits differs. tokens_per_second counts every input token (prompt and answer) over the "
                  "training loop's wall time; peak_rss_mb is the training process's peak (ru_maxrss), model loading "
                  "included. Losses are expected to agree to float rounding, which grows slowly over steps."],
    }
    (out_dir / "bench_logits.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out_dir / "bench_logits.md").write_text(to_markdown(doc), encoding="utf-8")
    return doc


def to_markdown(doc: dict[str, Any]) -> str:
    from patent_risk.evaluate.report_doc import md_table

    table = md_table(["arm", "tokens/s", "train s", "peak RSS MB", "train loss", "eval loss"],
                     [(r["arm"], r["tokens_per_second"], r["train_seconds"], f"{r['peak_rss_mb']:.0f}", f"{r['train_loss']:.6f}",
                       r["eval_loss"]) for r in doc["arms"]], align="lrrrrr")
    lines = [f"# train bench-logits: {doc['config']} {' '.join(doc['overrides'])}, {doc['steps']} steps", "", table]
    q, d = doc["labelled_over_full"], doc["loss_difference"]
    lines += ["", f"labelled / full: tokens/s x{q['tokens_per_second']}, train time x{q['train_seconds']}, "
                  f"peak RSS x{q['peak_rss_mb']}", "",
              f"loss difference: at most {d['max_abs_logged']} over the logged steps {d['logged_steps']}; "
              f"train loss {d['train_loss']:.2e}; eval loss {d['eval_loss']}", ""]
    lines += [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"
