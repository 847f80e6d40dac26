"""`patent-risk datagen OUT_DIR`: write the demo dataset's split (train.jsonl, eval.jsonl), as committed in
data/demo/, or with --learning-check the learning check's (train, dev, eval), as committed in data/learncheck/
(the default seeds reproduce those files byte for byte)."""
from __future__ import annotations

import click

from patent_risk.cli.edge import ErrorReportingCommand
from patent_risk.datagen.demo import DEFAULT_SEED, generate, write_splits


@click.command(cls=ErrorReportingCommand)
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=None, help="Random seed of the generator (default: the committed files' seed).")
@click.option("--learning-check", is_flag=True,
              help="Write the learning check instead (datagen/learncheck.py): the demo's patents and record format, "
                   "each element's match stated in plain words, risk levels in equal shares; train, dev and eval.")
def main(out_dir: str, seed: int | None, learning_check: bool) -> None:
    """Write the demo split (train.jsonl, eval.jsonl) to OUT_DIR: five invented Korean cosmetics patents, each
    record labelled by the rules in datagen/patents.py (docs/formats.md, section 5).

    \b
    patent-risk datagen data/demo            # the committed files, byte for byte
    patent-risk datagen /tmp/other --seed 7  # another draw by the same rules
    patent-risk datagen data/learncheck --learning-check
    """
    if learning_check:
        from patent_risk.datagen import learncheck

        splits = learncheck.generate(learncheck.SEED if seed is None else seed)
    else:
        splits = generate(DEFAULT_SEED if seed is None else seed)
    for split, path in write_splits(out_dir, splits).items():
        click.echo(f"{split}: {len(splits[split])} records -> {path}")
    if learning_check:
        for rule, acc in learncheck.rule_baselines(splits["train"], splits["dev"]).items():
            click.echo(f"dev, {rule} rule: risk {acc['risk_accuracy']:.1%}, match {acc['match_accuracy']:.1%}")


if __name__ == "__main__":
    main()
