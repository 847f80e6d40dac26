"""`patent-risk`: the one command. Every subcommand is a module of its own here (train, evaluate, serve, demo,
compare, recipe, datagen) or a benchmark of bench/; this module only puts them together."""
from __future__ import annotations

import click

from patent_risk.bench.grammar_mask import main as grammar_mask
from patent_risk.bench.grammar_step import main as grammar_step
from patent_risk.bench.lora_ops import main as lora_ops
from patent_risk.bench.report_speed import main as report_speed
from patent_risk.bench.schema_compile import main as schema_compile
from patent_risk.cli.compare import main as compare
from patent_risk.cli.datagen import main as datagen
from patent_risk.cli.demo import main as demo
from patent_risk.cli.edge import ErrorReportingGroup, version_option
from patent_risk.cli.evaluate import main as evaluate
from patent_risk.cli.recipe import main as recipe
from patent_risk.cli.serve import main as serve
from patent_risk.cli.train import main as train


@click.group(cls=ErrorReportingGroup)
@version_option
def main() -> None:
    """Fine-tune, serve and evaluate a model that judges patent-infringement risk as JSON.

    \b
    The usual order, on your data and your GPU (google/gemma-3-4b-it, QLoRA):
      patent-risk evaluate validate my/eval.jsonl        check every record (file, line, field)
      patent-risk train qlora --config train/configs/seed.yaml -s train_data=my/train.jsonl
      patent-risk evaluate batch --adapter mine=artifacts/adapters/gemma3-4b-seed --data my/eval.jsonl \\
          --both --out artifacts/runs/mine        both arms, on the adapter's own base and prompt
      patent-risk evaluate report artifacts/runs/mine-constrained artifacts/runs/mine-unconstrained --out artifacts/reports/mine
      patent-risk serve start --adapter mine=artifacts/adapters/gemma3-4b-seed       on the adapter's base
      patent-risk serve bench --help                     throughput of the running server

    \b
    On this machine's CPU, end to end on the embedded Gemma 3 270M: patent-risk demo (make demo).
    `evaluate ...` is the same as `patent-risk evaluate ...`. Each subcommand has its own --help.
    """


@click.group(cls=ErrorReportingGroup)
def bench() -> None:
    """Benchmarks of the project's own machinery, for its developers (schema compile time, the CPU LoRA ops,
    report speed, the structured-outputs bitmask on CPU logits, each backend's per-token grammar cost). Users
    measure their model with `patent-risk evaluate bench` (offline engines) and `patent-risk serve bench` (a
    server under load)."""


bench.add_command(schema_compile, "schema-compile")
bench.add_command(lora_ops, "lora-ops")
bench.add_command(report_speed, "report-speed")
bench.add_command(grammar_mask, "grammar-mask")
bench.add_command(grammar_step, "grammar-step")

for name, command in (("train", train), ("evaluate", evaluate), ("serve", serve), ("demo", demo),
                      ("compare", compare), ("recipe", recipe), ("datagen", datagen), ("bench", bench)):
    main.add_command(command, name)
