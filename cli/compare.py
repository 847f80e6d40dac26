"""`make compare`: which output schema should the model be trained and decoded with? (issue 18)

For each schema (v1: labels, risk first; v2: a short reason before each match; v3: element-first, labels
only), train an adapter with that output format on the same data, steps and seed (the config's recipe;
only ``schema_name`` differs), evaluate it constrained and unconstrained on the same eval split (both arms
on one engine, each arm its own run directory, named ``SCHEMA-constrained`` / ``SCHEMA-unconstrained``), and
write one report: every run with its schema's name and hash, 애매 recall, ``risk_consistent`` under the
dataset's risk rule, output tokens per sample and samples/s, and between schemas every pair within an arm
(McNemar on risk, paired bootstrap on risk and match accuracy).

Each step is the CLI command a user would type, printed before it runs; a trained adapter whose manifest
has the planned config is reused, and a run directory made with other settings is cleared.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from patent_risk.cli.demo import DEMO_CHUNK, DEMO_CONFIG, EVAL_DATA, clear_if_stale, run_cli
from patent_risk.cli.edge import ErrorReportingCommand
from patent_risk.cli.recipe import _overrides, _trained_as_planned
from patent_risk.runtime.artifacts import project_root, subdir
from patent_risk.schemas.labels import SCHEMA_NAMES
from patent_risk.schemas.risk_rules import RISK_RULES

TIMINGS_FILE = "compare_timings.json"


def _step(argv: list[str], timings: dict[str, float], step: str) -> None:
    t0 = time.time()
    run_cli(argv, f"compare: step '{step}'")
    timings[step] = round(time.time() - t0, 1)


def _parse_sets(sets: tuple[str, ...]) -> dict[str, str]:
    fields = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="-s/--set")
        if key in ("schema_name", "output_dir"):
            raise click.BadParameter(f"{key} is set per schema by the comparison itself", param_hint="-s/--set")
        fields[key] = value
    return fields


@click.command(cls=ErrorReportingCommand)
@click.option("--config", default=DEMO_CONFIG, show_default=True,
              help="Training config (relative to the project root or absolute); every schema is trained with it.")
@click.option("-s", "--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config field for every schema (e.g. -s train_data=my/train.jsonl). Repeatable.")
@click.option("--data", default=EVAL_DATA, show_default=True, help="The eval split every adapter is decoded on.")
@click.option("--schema", "schemas", multiple=True, type=click.Choice(SCHEMA_NAMES),
              help="Schemas to compare (default: all). Repeatable.")
@click.option("--risk-rule", default="all-elements", show_default=True, type=click.Choice(list(RISK_RULES)),
              help="The dataset's rule from element matches to risk_level, for risk_consistent.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Default: artifacts/compare.")
@click.option("--limit", type=int, default=None, help="Only the first N eval records (a quick look; the report says n).")
@click.option("--chunk-size", default=DEMO_CHUNK, show_default=True, help="Records decoded together (evaluate batch).")
@click.option("--max-model-len", default=1024, show_default=True,
              help="Engine context (the demo's longest v2 prompt plus its max_tokens budget is 842 tokens).")
@click.option("--verbose", "-v", is_flag=True, help="vLLM's own log on the terminal too (default: each run's engine.log).")
def main(config: str, sets: tuple[str, ...], data: str, schemas: tuple[str, ...], risk_rule: str, out: str | None,
         limit: int | None, chunk_size: int, max_model_len: int, verbose: bool) -> None:
    """Train one adapter per output schema (same data, steps and seed), evaluate each constrained and
    unconstrained on one eval split, and write one report comparing the schemas.

    \b
    make compare                                 # the demo: Gemma 3 270M, train/configs/demo.yaml, v1 v2 v3
    patent-risk compare --schema v1 --schema v3  # two schemas
    patent-risk compare --config train/configs/seed.yaml -s train_data=my/train.jsonl --data my/eval.jsonl \\
        --out artifacts/compare-4b               # google/gemma-3-4b-it, QLoRA, on a GPU

    v2 trains on each element's label.matches[].reason (the demo data has them); training refuses records
    without one. The report is OUT/report/report.html; OUT/report/compare_timings.json has each step's time.
    """
    from patent_risk.train.config import load_config

    fields = _parse_sets(sets)
    names = list(dict.fromkeys(schemas)) or list(SCHEMA_NAMES)
    out_dir = Path(out) if out else subdir("compare")
    config_path = Path(config) if Path(config).is_absolute() else project_root() / config
    base_model = load_config(config_path, [f"{k}={v}" for k, v in fields.items()]).base_model
    timings: dict[str, float] = {}
    t_all = time.time()
    _step(["evaluate", "validate", data], timings, "validate")
    runs: list[str] = []
    for name in names:
        adapter_dir = out_dir / name / "adapter"
        overrides = _overrides({**fields, "schema_name": name, "output_dir": str(adapter_dir)})
        if _trained_as_planned(adapter_dir, config, overrides):
            print(f"\n{name}: reusing {adapter_dir} (trained as planned)", flush=True)
        else:
            _step(["train", "qlora", "--config", config, *overrides], timings, f"train_{name}")
        prefix = out_dir / "runs" / name
        adapter_name = f"compare-{name}"
        for arm in ("constrained", "unconstrained"):
            clear_if_stale(Path(f"{prefix}-{arm}"), arm == "constrained", adapter_dir, data=data,
                           adapter_name=adapter_name, schema_name=name, model=base_model)
        _step(["evaluate", "batch", "--data", data, "--adapter", f"{adapter_name}={adapter_dir}", "--schema", name,
               "--both", "--out", str(prefix), "--chunk-size", str(chunk_size), "--max-model-len", str(max_model_len),
               *(["--model", base_model] if base_model else []), *(["--limit", str(limit)] if limit else []),
               *(["--verbose"] if verbose else [])],
              timings, f"evaluate_{name}")
        runs += [f"{prefix}-constrained", f"{prefix}-unconstrained"]
    report_dir = out_dir / "report"
    _step(["evaluate", "report", *runs, "--risk-rule", risk_rule, "--pairs", "within-arm", "--out", str(report_dir)],
          timings, "report")
    timings["total"] = round(time.time() - t_all, 1)
    (report_dir / TIMINGS_FILE).write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")
    print(f"\ncomparison finished in {timings['total'] / 60:.1f} min: {json.dumps(timings)}")
    print(f"HTML report: {report_dir / 'report.html'}")


if __name__ == "__main__":
    main()
