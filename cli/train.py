"""`patent-risk train`: QLoRA fine-tuning and adapter export (a thin layer over train.trainer)."""
from __future__ import annotations

import click

from patent_risk.cli.edge import ErrorReportingGroup
from patent_risk.train.config import describe_fields

BASE_HELP = ("Base model: local folder, HF id (read through the local Hugging Face cache) or an embedded model's name. "
             "Default: the adapter's own base (its manifest.json, else adapter_config.json). One that is not the "
             "adapter's base is refused.")
CONFIG_KEYS = "\b\nConfig keys (-s KEY=VALUE, or in the YAML; the default in parentheses):\n" + "\n".join(describe_fields())


@click.group(cls=ErrorReportingGroup)
def main() -> None:
    """Fine-tune a base model with QLoRA on a patent-risk dataset and export a vLLM-ready adapter.

    \b
    patent-risk train qlora                                 demo recipe on the embedded Gemma 3 270M
    patent-risk train qlora --config train/configs/seed.yaml -s train_data=my/train.jsonl
                                                            the users' Gemma 3 4B recipe (GPU)
    patent-risk train qlora -s limit=50 -s learning_rate=5e-4  override any config field
    patent-risk train qlora -s augment_boundary=80          add 80 generated boundary cases (demo patents)
    patent-risk train qlora -s oversample_where=meta.near_boundary -s oversample_factor=3
                                                            repeat the near-boundary records 3x
    patent-risk train qlora --print-config                  every field, data-mix ones included
    patent-risk train bench-logits --steps 20               full logits against labelled positions only
    patent-risk train dev-split -s dev_size=120 --out artifacts/dev.jsonl
                                                            the records a recipe is chosen on (never trained on)
    """


@main.command("qlora", epilog=CONFIG_KEYS)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config (default: train/configs/demo.yaml; train/configs/seed.yaml is the Gemma 3 4B QLoRA "
                   "recipe, which needs -s train_data=FILE).")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, e.g. -s epochs=3 -s base_model=google/gemma-3-4b-it. Repeatable.")
@click.option("--prompt-template", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Your own prompt: a Jinja template of the user turn over the record's fields (claim, elements, query, "
                   "answer_format, ...; README, 'Your own prompt'), wrapped in the model's chat template. Recorded in "
                   "the adapter's manifest; evaluation uses it by default. Same as -s prompt_template=FILE.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint of an interrupted run.")
@click.option("--print-config", is_flag=True, help="Print the resolved config and exit.")
def train_qlora(config_path, overrides, prompt_template, resume, print_config) -> None:
    """Train a LoRA adapter (4-bit NF4 base where bitsandbytes runs on the device)."""
    from patent_risk.train.config import load_config

    if prompt_template:
        overrides = (*overrides, f"prompt_template={prompt_template}")
    cfg = load_config(config_path, overrides)
    if print_config:
        import yaml

        click.echo(yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False))
        return
    cfg.training_file()  # at once, before the trainer's imports
    cfg.prompt()
    from patent_risk.train.trainer import train

    result = train(cfg, resume=resume, log=click.echo)
    if result.manifest:  # under torchrun / accelerate launch: the first process's, the one that wrote it
        click.echo(str(result.adapter_dir))


@main.command("dev-split")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config (default: train/configs/demo.yaml).")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field. Repeatable.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL file to write the dev records to.")
def dev_split_cmd(config_path, overrides, out) -> None:
    """Write the config's dev split (dev_size records of train_data, chosen by dev_seed): the records `patent-risk train qlora`
    never trains on with that config, for `evaluate curve` to choose a recipe on.

    \b
    patent-risk train dev-split -s dev_size=120 --out artifacts/dev.jsonl
    """
    import json
    from pathlib import Path

    from patent_risk.runtime.artifacts import atomic_write_text
    from patent_risk.schemas.errors import UserError
    from patent_risk.schemas.records import load_dataset
    from patent_risk.train.config import load_config
    from patent_risk.train.data_mix import dev_split

    cfg = load_config(config_path, overrides)
    if cfg.dev_size == 0:
        raise UserError("dev_size is 0 in this config: set it (e.g. -s dev_size=120)")
    _, dev = dev_split(cfg, load_dataset(cfg.training_file()).records)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in dev))
    click.echo(f"{out}: {len(dev)} dev records of {cfg.train_data} (dev_seed {cfg.dev_seed})")


@main.command("check-adapter")
@click.argument("adapter_dir", type=click.Path())
@click.option("--max-lora-rank", default=16, show_default=True, help="The serving --max-lora-rank.")
def check_adapter(adapter_dir, max_lora_rank) -> None:
    """Say whether vLLM would load ADAPTER_DIR, and why not."""
    from patent_risk.runtime.adapters import check_adapter_dir

    cfg = check_adapter_dir(adapter_dir, max_lora_rank)
    click.echo(f"ok: rank {cfg.get('r')}, alpha {cfg.get('lora_alpha')}, targets {cfg.get('target_modules')}")


@main.command("merge")
@click.argument("adapter_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the merged model.")
@click.option("--base", default=None, help=BASE_HELP)
@click.option("--allow-other-base", is_flag=True, help="Merge into a --base that is not the adapter's base, on purpose.")
@click.option("--dtype", default=None, type=click.Choice(["float32", "bfloat16", "float16"]),
              help="Default: the base model's own dtype (its config.json); never float16 for Gemma 3.")
@click.option("--onto", default="trained", show_default=True, type=click.Choice(["trained", "unquantized"]),
              help="trained: a QLoRA adapter is merged into the NF4-rounded base it was trained against "
                   "(`patent-risk train nf4-base`); unquantized: into the original weights.")
def merge_cmd(adapter_dir, out, base, allow_other_base, dtype, onto) -> None:
    """Fold ADAPTER_DIR into a full copy of its base model (served without LoRA), in the base's own dtype."""
    from patent_risk.train.merge import merge

    merge(adapter_dir, out, base=base, dtype=dtype, log=click.echo, onto=onto, allow_other_base=allow_other_base)


@main.command("nf4-base")
@click.argument("adapter_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--base", default=None, help=BASE_HELP)
@click.option("--allow-other-base", is_flag=True, help="Round a --base that is not the adapter's base, on purpose.")
def nf4_base_cmd(adapter_dir, base, allow_other_base) -> None:
    """Write the base a QLoRA (NF4) adapter was trained against, dequantized to the base's own dtype (bfloat16
    for gemma-3-4b-it), and print its folder: serve the adapter on it instead of the unquantized base.

    \b
    evaluate batch --model "$(patent-risk train nf4-base artifacts/adapters/x | tail -n 1)" --adapter x=artifacts/adapters/x ...
    vllm serve <that folder> --enable-lora --lora-modules x=artifacts/adapters/x
    """
    from pathlib import Path

    from patent_risk.schemas.errors import UserError
    from patent_risk.train.merge import base_of
    from patent_risk.train.nf4_base import nf4_base, trained_quantization

    quant = trained_quantization(adapter_dir)
    if quant is None:
        raise UserError(f"{adapter_dir}: its manifest says it was not trained on an NF4 base (plain LoRA): serve it on "
                        "the unquantized base")
    model_path = base_of(Path(adapter_dir), base, allow_other_base, click.echo)
    click.echo(str(nf4_base(model_path, quant["double_quant"], log=click.echo)))


@main.command("bench-logits")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config (default: train/configs/demo.yaml).")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field. Repeatable.")
@click.option("--steps", default=20, show_default=True, help="Optimizer steps per arm.")
@click.option("--out", default="artifacts/bench/logits", show_default=True, type=click.Path(file_okay=False),
              help="Folder for bench_logits.json/.md, both arms' logs and adapters.")
def bench_logits(config_path, overrides, steps, out) -> None:
    """Train the same recipe twice, full logits against labelled positions only (labelled_logits=false/true):
    tokens/s, peak RSS and the loss difference.

    \b
    Each arm runs `patent-risk train qlora` in its own process, one after the other: run it on a quiet machine.
    patent-risk train bench-logits --steps 20                 the demo recipe, 20 steps an arm
    """
    from patent_risk.bench.logits import run

    doc = run(config_path, tuple(overrides), steps, out, log=click.echo)
    q = doc["labelled_over_full"]
    click.echo(f"labelled / full: tokens/s x{q['tokens_per_second']}, peak RSS x{q['peak_rss_mb']}; "
               f"max loss difference {doc['loss_difference']['max_abs_logged']}; {out}/bench_logits.md")


if __name__ == "__main__":
    main()
