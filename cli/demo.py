"""`make demo`: the main job end to end on the embedded default, reusing whatever is already built.

Each step runs the same CLI command a user would type (printed before it runs), in its own process:
provision the base model, train the demo adapter (the recipe chosen on the dev split by `make recipe`),
evaluate the eval split constrained and unconstrained through vLLM with the adapter as a LoRA module, the
untrained base model in both arms on one engine, and the training split's majority answer; write a report of
the base's two arms paired on validity (what the constraint buys a model never taught the format: the summary
leads with it) and one that pairs the adapter's constrained run against each run (McNemar, paired bootstrap),
with the meta.novel slice.
The terminal shows the commands, progress, the results table and the report's path; vLLM's own log
goes to each run directory's engine.log (--verbose, or `make demo VERBOSE=1`: the terminal too).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click

from patent_risk.cli.edge import ErrorReportingCommand
from patent_risk.evaluate.batch import arm_dirs
from patent_risk.runtime.artifacts import project_root, subdir

EVAL_DATA = "data/demo/eval.jsonl"
TRAIN_DATA = "data/demo/train.jsonl"
ADAPTER_NAME = "demo"
DEMO_CONFIG = "train/configs/demo.yaml"
DEMO_CHUNK = 160  # more than the eval split's 147 records: one chunk


def _adapter_is_current(adapter_dir: Path) -> bool:
    """An adapter is reused only when it was trained with the demo config as it is now, on the same data
    and the same base model.

    The manifest's config is read through TrainConfig, so a field added since (at its default, which
    changes nothing) does not make an adapter stale. Generated boundary records come from code, not
    from the data file: with augment_boundary the training list itself is recomputed and compared.
    """
    from pydantic import ValidationError

    from patent_risk.runtime.adapters import read_manifest
    from patent_risk.runtime.artifacts import file_sha256
    from patent_risk.train.config import TrainConfig, load_config

    manifest = read_manifest(adapter_dir) if adapter_dir.is_dir() else None
    if manifest is None:
        return False
    cfg = load_config(project_root() / DEMO_CONFIG)
    try:
        trained = TrainConfig.model_validate(manifest.get("config") or {}).model_dump(mode="json")
    except ValidationError:
        return False
    data_path = project_root() / cfg.train_data
    if trained != cfg.model_dump(mode="json") or manifest.get("data", {}).get("sha256") != file_sha256(data_path):
        return False
    from patent_risk.runtime.artifacts import describe_path
    from patent_risk.runtime.embedded import resolve_model

    base = resolve_model(cfg.base_model, log=lambda s: None)
    if (manifest.get("base_model") or {}).get("sha256") != describe_path(base)["sha256"]:
        return False  # trained on another base model (e.g. the earlier default)
    if cfg.augment_boundary:
        from patent_risk.schemas.records import load_dataset
        from patent_risk.train.data_mix import training_data

        _, _, mix = training_data(cfg, load_dataset(data_path).records)
        return (manifest.get("data_mix") or {}).get("train_records_sha256") == mix["train_records_sha256"]
    return True


def clear_if_stale(out: Path, constrained: bool, adapter_dir: Path | None, *, data: str = EVAL_DATA,
                   adapter_name: str = ADAPTER_NAME, schema_name: str = "v1", model: str | None = None) -> None:
    """The demo (and the schema comparison) own their run directories: one made with another adapter
    (retrained after an edit of the config) or other settings is cleared, with a line saying why, so the
    report shows only runs of the adapter as it is now. `evaluate batch` itself would refuse to mix them."""
    import shutil

    from patent_risk.evaluate.batch import BatchConfig, stale_differences
    from patent_risk.runtime.engines import AdapterSpec

    cfg = BatchConfig(data=str(project_root() / data), out=str(out), constrained=constrained, schema_name=schema_name,
                      model=model, adapter=None if adapter_dir is None else AdapterSpec(adapter_name, str(adapter_dir)))
    diffs = stale_differences(cfg, log=lambda s: None)
    if diffs:
        print(f"\n{out}: made with other settings ({'; '.join(diffs)}); cleared for a fresh run", flush=True)
        shutil.rmtree(out)


def run_cli(argv: list[str], who: str, capture: bool = False) -> str:
    """Run a `patent-risk ...` subcommand line (``argv`` without the program name) in its own process, printed
    first as a user would type it; exit naming ``who`` and the command when it fails. ``capture``: its output is
    shown and also returned."""
    shown = " ".join(shlex.quote(a) for a in ["patent-risk", *argv])
    print(f"\n$ {shown}", flush=True)
    done = subprocess.run([sys.executable, "-m", "patent_risk", *argv], cwd=project_root(),
                          stdout=subprocess.PIPE if capture else None, text=True)
    if capture:
        print(done.stdout, end="", flush=True)
    if done.returncode != 0:
        sys.exit(f"{who} failed (exit {done.returncode}): {shown}")
    return done.stdout or ""


def _run(argv: list[str], timings: dict[str, float], step: str) -> None:
    t0 = time.time()
    run_cli(argv, f"demo: step '{step}'")
    timings[step] = round(time.time() - t0, 1)


def constraint_summary(metrics_path: Path) -> str:
    """The demo's headline: the untrained base, never taught the answer's format, decoded free and held to the
    JSON schema by the constraint, paired per sample on validity."""
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    (held_name, held), (free_name, free) = list(metrics["runs"].items())[:2]
    pair = next(c for c in metrics["comparisons"] if {c["reference"], c["run"]} == {held_name, free_name})
    m = pair["json_valid"]["mcnemar"]

    def valid(r: dict) -> str:
        v, rv = r["json_valid"], r["record_valid"]
        return f"{v['count']}/{v['total']} valid JSON, {rv['count']}/{rv['total']} with exactly the record's elements"

    kinds = free["invalid_kinds"]
    why = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in kinds.items() if n) or "none"
    p = m["p_value"]
    test = (f"McNemar exact p = {p:.3g} (b = {m['b']}, c = {m['c']})"
            + ("; with one arm always valid the test is trivially significant" if min(m["b"], m["c"]) == 0 and p < 0.05 else ""))
    return ("What the constraint buys, on a model never taught the answer's format (the untrained base):\n"
            f"  held to the schema: {valid(held)}\n"
            f"  free:               {valid(free)}; not record_valid by kind: {why}; "
            f"finish_reason=length {free['finish_length']}\n"
            f"  paired on validity: {test}")


@click.command(cls=ErrorReportingCommand)
@click.option("--verbose", "-v", is_flag=True, help="vLLM's own log on the terminal too (default: each run directory's engine.log).")
def main(verbose: bool) -> None:
    """`make demo`: validate the eval split, provision the embedded model, train the demo adapter (reused while
    current), evaluate it constrained and unconstrained, the untrained base in both arms and the majority
    baseline, and write the reports (artifacts/reports/demo, and its constraint/ folder: the base's arms paired
    on validity). Each step prints the command a user would type."""
    timings: dict[str, float] = {}
    t_all = time.time()
    adapter_dir = subdir("adapters") / ADAPTER_NAME
    runs = subdir("runs")
    report_dir = subdir("reports") / "demo"

    _run(["evaluate", "validate", EVAL_DATA], timings, "validate")
    from patent_risk.runtime.embedded import ensure_embedded_model

    t0 = time.time()
    print(f"\nbase model: {ensure_embedded_model()}", flush=True)
    timings["base_model"] = round(time.time() - t0, 1)
    if _adapter_is_current(adapter_dir):
        print(f"\nadapter: reusing {adapter_dir} (trained with the current {DEMO_CONFIG}; delete it to retrain)")
    else:
        _run(["train", "qlora", "--config", DEMO_CONFIG], timings, "train")
    arms = {arm: Path(d) for arm, d in arm_dirs(str(runs / "demo")).items()}
    for arm, out in arms.items():
        clear_if_stale(out, arm == "constrained", adapter_dir)
    # Both arms on one engine (one start instead of two), all 147 records decoded as one chunk: on vLLM's CPU
    # build a chunk of 147 generated in 0.69x the time of 32-record chunks (measured; identical outputs), and
    # 1024 tokens hold the longest prompt and answer (323 + 218) with room, so the KV cache is half as large.
    _run(["evaluate", "batch", "--data", EVAL_DATA, "--adapter", f"{ADAPTER_NAME}={adapter_dir}", "--both",
          "--out", str(runs / "demo"), "--chunk-size", str(DEMO_CHUNK), "--max-model-len", "1024",
          *(["--verbose"] if verbose else [])], timings, "evaluate_both_arms")
    # The untrained base in both arms on one engine: a model never taught the format, free and held to it by the
    # constraint. Its runs do not depend on the adapter, so a retrained adapter reuses them.
    base_arms = {arm: Path(d) for arm, d in arm_dirs(str(runs / "demo-base")).items()}
    for arm, out in base_arms.items():
        clear_if_stale(out, arm == "constrained", None)
    _run(["evaluate", "batch", "--data", EVAL_DATA, "--both", "--out", str(runs / "demo-base"),
          "--chunk-size", str(DEMO_CHUNK), "--max-model-len", "1024", *(["--verbose"] if verbose else [])],
         timings, "evaluate_base_both_arms")
    majority = runs / "demo-majority"  # instant, so always written afresh from the training file as it is now
    if majority.exists():
        import shutil

        shutil.rmtree(majority)
    _run(["evaluate", "baseline", "--train", TRAIN_DATA, "--data", EVAL_DATA, "--out", str(majority)], timings, "majority")
    # What the constraint buys: the base's two arms paired per sample on validity (a report of their own).
    _run(["evaluate", "report", str(base_arms["constrained"]), str(base_arms["unconstrained"]),
          "--out", str(report_dir / "constraint")], timings, "report_constraint")
    _run(["evaluate", "report", str(arms["constrained"]), str(arms["unconstrained"]), str(base_arms["constrained"]), str(majority),
          "--by", "meta.novel", "--out", str(report_dir)], timings, "report")
    timings["total"] = round(time.time() - t_all, 1)
    (report_dir / "demo_timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print("\n" + constraint_summary(report_dir / "constraint" / "metrics.json"))
    print(f"\ndemo finished in {timings['total'] / 60:.1f} min: {json.dumps(timings)}")
    print(f"HTML report: {report_dir / 'report.html'}")


if __name__ == "__main__":
    main()
