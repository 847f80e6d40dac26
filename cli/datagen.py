"""`patent-risk datagen OUT_DIR`: write the demo dataset's split (train.jsonl, eval.jsonl), as committed in
data/demo/ (the default seed reproduces those files byte for byte)."""
from __future__ import annotations

import click

from patent_risk.cli.edge import ErrorReportingCommand
from patent_risk.datagen.demo import DEFAULT_SEED, write_split


@click.command(cls=ErrorReportingCommand)
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Random seed of the generator.")
def main(out_dir: str, seed: int) -> None:
    """Write the demo split (train.jsonl, eval.jsonl) to OUT_DIR: five invented Korean cosmetics patents, each
    record labelled by the rules in datagen/patents.py (docs/formats.md, section 5).

    \b
    patent-risk datagen data/demo            # the committed files, byte for byte
    patent-risk datagen /tmp/other --seed 7  # another draw by the same rules
    """
    for split, path in write_split(out_dir, seed).items():
        n = path.read_bytes().count(b"\n")
        click.echo(f"{split}: {n} records -> {path}")


if __name__ == "__main__":
    main()
