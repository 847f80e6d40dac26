"""Benchmark of `evaluate report`: synthetic run directories, then ``write_report`` timed.

    patent-risk bench report-speed [--runs 10] [--samples 10000] [--resamples 1000] [--keep DIR]

The synthetic runs look like real ones: 50 patents, 3 to 6 elements per record, a skewed gold
distribution, compact and indented outputs, fenced ones, truncated ones (finish_reason=length) and
schema failures, each run with its own error rate; ``evaluate.rundir.write_run`` writes them.
"""
from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from patent_risk.evaluate.rundir import write_run
from patent_risk.schemas.labels import MATCH_LABELS, RISK_LEVELS


def output_text(risk: str, matches: list[tuple[str, str]], style: str = "compact") -> str:
    """A model output for labels: ``compact`` JSON, ``indented`` (as xgrammar writes it) or ``fenced``."""
    obj = {"risk_level": risk, "matches": [{"element_id": e, "match": m} for e, m in matches]}
    if style == "indented":
        return json.dumps(obj, ensure_ascii=False, indent=2)
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"```json\n{text}\n```" if style == "fenced" else text


def synthetic_dataset(samples: int, seed: int = 0) -> list[dict[str, Any]]:
    """Records with gold labels: ``id``, ``patent_id``, ``query``, ``elements``, ``gold``, ``meta``."""
    rng = random.Random(seed)
    records = []
    for i in range(samples):
        k = rng.randint(3, 6)
        elements = [{"id": f"E{j + 1}", "text": f"구성요소 {j + 1}: 폴리아미드계 겔화제 {rng.randint(1, 60)}중량%"} for j in range(k)]
        gold = {"risk_level": rng.choices(RISK_LEVELS, weights=[2, 3, 5])[0],
                "matches": [{"element_id": e["id"], "match": rng.choices(MATCH_LABELS, weights=[6, 2, 2])[0]} for e in elements]}
        records.append({"id": f"S{i:06d}", "patent_id": f"P{i % 50:02d}", "query": f"ATPA 겔화제 {rng.randint(1, 60)}% 함유 화장품 조성물 #{i}",
                        "elements": elements, "gold": gold, "meta": {"boundary_distance": rng.choice([0, 1, 2, 5]), "split": "eval"}})
    return records


def synthetic_run(records: list[dict[str, Any]], accuracy: float, invalid_rate: float, seed: int) -> list[dict[str, Any]]:
    """Result rows for ``records`` from a model right ``accuracy`` of the time, invalid ``invalid_rate`` of it."""
    rng = random.Random(seed)
    rows = []
    for rec in records:
        gold = rec["gold"]
        risk = gold["risk_level"] if rng.random() < accuracy else rng.choice(RISK_LEVELS)
        matches = [(m["element_id"], m["match"] if rng.random() < accuracy else rng.choice(MATCH_LABELS)) for m in gold["matches"]]
        finish = "stop"
        u = rng.random()
        if u < invalid_rate / 2:
            text, finish = output_text(risk, matches)[: rng.randint(5, 60)], "length"
        elif u < invalid_rate:
            text = output_text(risk, matches).replace('"match"', '"label"', 1)
        else:
            text = output_text(risk, matches, rng.choices(["compact", "indented", "fenced"], weights=[8, 1, 1])[0])
        rows.append({**rec, "raw_output": text, "finish_reason": finish, "prompt_tokens": 600,
                     "output_tokens": len(text) // 2, "latency_s": 0.5})
    return rows


def make_runs(root: str | Path, runs: int = 10, samples: int = 10_000, seed: int = 0) -> list[Path]:
    """Write ``runs`` synthetic run directories over the same ``samples`` records under ``root``."""
    records = synthetic_dataset(samples, seed)
    dirs = []
    for r in range(runs):
        constrained = r % 2 == 1
        info = {"format_version": 1, "schema": {"name": "v1"}, "constrained": constrained,
                "backend": "outlines" if constrained else None, "base_model": {"name": "google/gemma-3-4b-it"},
                "adapter": {"name": f"adapter-{r // 2}", "path": f"adapters/{r // 2}", "hash": f"{r // 2:016x}"},
                "dataset": {"path": "data/eval.jsonl", "hash": "0" * 16}, "engine": {"name": "vllm", "version": "0.32.0"},
                "sampling": {"temperature": 0.0}}
        rows = synthetic_run(records, accuracy=0.85 + 0.01 * r, invalid_rate=0.0 if constrained else 0.03, seed=seed + r)
        dirs.append(write_run(Path(root) / f"run{r:02d}{'-constrained' if constrained else ''}", rows, info))
    return dirs


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--runs", type=int, default=10, show_default=True)
@click.option("--samples", type=int, default=10_000, show_default=True)
@click.option("--resamples", type=int, default=1000, show_default=True)
@click.option("--by", multiple=True, help="A slice field (repeatable).")
@click.option("--keep", default=None, help="Write the runs and the report here instead of a temporary folder.")
def main(runs: int, samples: int, resamples: int, by: tuple[str, ...], keep: str | None) -> None:
    """Generate the runs, time ``write_report`` on them and print the seconds."""
    from patent_risk.evaluate.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(keep or tmp)
        t0 = time.perf_counter()
        dirs = make_runs(root / "runs", runs, samples)
        t1 = time.perf_counter()
        report = write_report(dirs, root / "report", by=list(by), bootstrap=resamples)
        t2 = time.perf_counter()
    click.echo(f"generated {runs} runs x {samples} samples in {t1 - t0:.1f} s")
    click.echo(f"write_report: {t2 - t1:.2f} s ({len(report.metrics['comparisons'])} comparisons, "
               f"{resamples} resamples each; by {list(by) or 'nothing'})")


if __name__ == "__main__":
    main()
