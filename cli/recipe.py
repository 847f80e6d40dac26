"""`make recipe` and the studies: train variants of a recipe and score them on the dev split (issue 16).

A plan (YAML, e.g. train/configs/recipe_search.yaml) names a base config, the dev split, fields common to
every variant and the variants. This writes the dev split, trains each variant once (reusing one whose
manifest has the planned config; a variant given as ``{adapter: DIR}`` is an adapter trained elsewhere), then
`evaluate curve` over the variants' checkpoints (``final_only``: the final adapters only; ``base``: the
untrained base as a point), which writes the learning curve and the point its rule chooses. ``on_trained_base``
lists NF4-trained variants to decode also on the NF4-rounded base they were trained against (`train
nf4-base`); ``report`` writes one `evaluate report` over every run (``by``: its slices). Each step is the CLI
command a user would type, printed before it runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import yaml

from patent_risk.cli.demo import run_cli
from patent_risk.cli.edge import ErrorReportingCommand
from patent_risk.runtime.artifacts import project_root, subdir

PLAN = "train/configs/recipe_search.yaml"


def _overrides(fields: dict) -> list[str]:
    out = []
    for key, value in fields.items():
        out += ["-s", f"{key}={'null' if value is None else str(value).lower() if isinstance(value, bool) else value}"]
    return out


def _run(argv: list[str], capture: bool = False) -> str:
    return run_cli(argv, "recipe", capture=capture)


def _trained_as_planned(adapter_dir: Path, config: str, overrides: list[str]) -> bool:
    from patent_risk.runtime.adapters import read_manifest
    from patent_risk.train.config import TrainConfig, load_config

    manifest = read_manifest(adapter_dir) if adapter_dir.is_dir() else None
    if manifest is None:
        return False
    planned = load_config(project_root() / config, [o for o in overrides if o != "-s"]).model_dump(mode="json")
    trained = TrainConfig.model_validate(manifest.get("config") or {}).model_dump(mode="json")
    where = ("output_dir", "output_name")  # where it was written is no part of the recipe (a moved sweep is reused)
    return {k: v for k, v in trained.items() if k not in where} == {k: v for k, v in planned.items() if k not in where}


PLAN_KEYS = {"config", "dev_size", "dev_seed", "budget_s", "every", "final_only", "base", "common", "variants",
             "on_trained_base", "report"}


def read_plan(path: Path) -> dict:
    """The plan, or an exit naming the file and what is wrong with it (missing or unknown keys, bad YAML)."""
    try:
        plan = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise SystemExit(f"{path}: cannot read the plan: {e}") from None
    if not isinstance(plan, dict):
        raise SystemExit(f"{path}: expected a mapping of plan keys ({', '.join(sorted(PLAN_KEYS))})")
    missing = [k for k in ("config", "dev_size", "variants") if k not in plan]
    unknown = sorted(set(plan) - PLAN_KEYS)
    if missing or unknown:
        raise SystemExit(f"{path}: " + "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                                                  + ([f"unknown key(s) {', '.join(unknown)}"] if unknown else [])))
    for name, fields in plan["variants"].items():
        if not isinstance(fields, dict):
            raise SystemExit(f"{path}: variants.{name}: expected a mapping of config fields (or {{adapter: DIR}})")
    return plan


@click.command(cls=ErrorReportingCommand)
@click.option("--plan", "plan_path", default=PLAN, show_default=True, help="The search plan (YAML), relative to the project root.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Default: artifacts/sweeps/<plan name>.")
def main(plan_path: str, out: str | None) -> None:
    """Train the variants of a recipe plan and score them on its dev split: `make recipe`, or a study.

    \b
    patent-risk recipe                                          # train/configs/recipe_search.yaml
    patent-risk recipe --plan train/configs/augment_study.yaml  # boundary augmentation, same steps
    patent-risk recipe --plan train/configs/nf4_study.yaml      # NF4 against plain LoRA
    """
    plan = read_plan(project_root() / plan_path)
    out = Path(out) if out else subdir("sweeps") / Path(plan_path).stem
    dev = out / "dev.jsonl"
    dev_fields = {"dev_size": plan["dev_size"], "dev_seed": plan.get("dev_seed", 0)}
    _run(["train", "dev-split", "--config", plan["config"], *_overrides(dev_fields), "--out", str(dev)])
    named, adapters = [], {}
    for name, fields in plan["variants"].items():
        if "adapter" in fields:  # trained elsewhere (e.g. by make demo): used as it is
            adapter_dir = Path(fields["adapter"])
        else:
            adapter_dir = out / name / "adapter"
            overrides = _overrides({**dev_fields, **plan.get("common", {}), **fields, "output_dir": str(adapter_dir)})
            if _trained_as_planned(adapter_dir, plan["config"], overrides):
                print(f"\n{name}: reusing {adapter_dir} (trained as planned)", flush=True)
            else:
                _run(["train", "qlora", "--config", plan["config"], *overrides])
        adapters[name] = adapter_dir
        named.append(f"{name}={adapter_dir}")
    curve = out / "curve"
    _run(["evaluate", "curve", *named, "--data", str(dev), "--out", str(curve),
          *(["--budget-s", str(plan["budget_s"])] if plan.get("budget_s") else []),
          *(["--every", str(plan["every"])] if plan.get("every") else []),
          *(["--final-only"] if plan.get("final_only") else []), *([] if plan.get("base", True) else ["--no-base"])])
    # In the plan's order (the curve's points): the report's reference is the first variant
    points = json.loads((curve / "curve.json").read_text(encoding="utf-8"))["points"]
    runs = [p["run_dir"] for p in points] if plan.get("report") else []
    for name in plan.get("on_trained_base", []):  # `patent-risk train nf4-base` prints the folder last (it refuses plain LoRA)
        rounded = _run(["train", "nf4-base", str(adapters[name])], capture=True).strip().splitlines()[-1]
        run = curve / "runs" / f"{name}-on-nf4-base"
        _run(["evaluate", "batch", "--data", str(dev), "--model", rounded, "--adapter", f"{name}={adapters[name]}",
              "--constrained", "--out", str(run), "--chunk-size", "160", "--max-model-len", "1024"])
        runs.append(str(run))
    if plan.get("report"):
        _run(["evaluate", "report", *runs, *[a for f in plan["report"].get("by", []) for a in ("--by", f)],
              "--out", str(out / "report")])


if __name__ == "__main__":
    main()
