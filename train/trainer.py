"""The QLoRA trainer: HF Trainer + PEFT, prompt-masked features, hardware-chosen precision.

Runs unchanged under `accelerate launch` / `torchrun` (HF Trainer's own distributed support).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from patent_risk.runtime.adapters import adapter_problems
from patent_risk.runtime.artifacts import describe_path, file_sha256, subdir
from patent_risk.runtime.bases import model_folder
from patent_risk.runtime.embedded import default_model_label
from patent_risk.schemas.errors import UserError
from patent_risk.schemas.output import has_reason, load_schema, schema_hash
from patent_risk.schemas.prompt import check_renders
from patent_risk.schemas.records import load_dataset

from . import hardware
from .config import TrainConfig
from .data_mix import training_data
from .features import build_features, make_collator

MANIFEST_VERSION = 1


@dataclass
class TrainResult:
    adapter_dir: Path
    manifest: dict[str, Any]


def _adapter_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.output_dir) if cfg.output_dir else subdir("adapters") / cfg.output_name


def target_modules_for(model, modules: list[str]) -> list[str] | str:
    """Names for LoRA's target_modules. For multimodal wrappers (Gemma 3's
    Gemma3ForConditionalGeneration) only the language model is adapted: a regex over its layers."""
    names = [n for n, _ in model.named_modules()]
    if any(".language_model." in f".{n}." for n in names) and any("vision" in n for n in names):
        return r".*language_model.*\.(" + "|".join(modules) + r")"
    return modules


def quantization_config(cfg: TrainConfig, compute_dtype):
    """The BitsAndBytesConfig of an NF4 base: 4-bit NF4 weights, their quantization constants quantized
    again when ``cfg.double_quant``, compute and storage in ``compute_dtype`` (a torch dtype)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=compute_dtype)


def _silent(_line: str) -> None:
    pass


def _cuda_device() -> int:
    """The GPU this process trains on: its LOCAL_RANK under `torchrun` / `accelerate launch` (one GPU per
    process: a 4-bit model cannot be moved after loading, so it must load on its own rank's device), else the
    current device."""
    import torch

    local = os.environ.get("LOCAL_RANK")
    return int(local) if local is not None else torch.cuda.current_device()


def load_base(model_path: str, plan: hardware.Plan, cfg: TrainConfig):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if plan.compute_dtype == "bf16" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": dtype}
    if plan.quantization == "nf4":
        kwargs["quantization_config"] = quantization_config(cfg, dtype)
        kwargs["device_map"] = {"": plan.device if plan.device == "cpu" else _cuda_device()}
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    return model, tokenizer


def _final_eval(trainer) -> dict[str, float]:
    """The eval loss of the trained model: the evaluation the Trainer ran at the last step when there was one
    (eval_steps dividing the step count), else a new one."""
    history = trainer.state.log_history
    last = next((h for h in reversed(history) if "eval_loss" in h), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return dict(last)
    return trainer.evaluate()


def _progress_callback(log: Callable[[str], None]):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One line per logging step: loss, tokens/s, ETA."""

        def on_train_begin(self, args, state, control, **kw):
            self.t0, self.tokens0, self.step0 = time.time(), state.num_input_tokens_seen or 0, state.global_step

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or not state.is_world_process_zero or not any(k in logs for k in ("loss", "eval_loss")):
                return  # the end-of-training summary (runtime, samples/s) is in the manifest, not a line
            dt = max(time.time() - self.t0, 1e-9)
            steps = max(state.global_step - self.step0, 1)
            tok_s = ((state.num_input_tokens_seen or 0) - self.tokens0) / dt
            eta = (state.max_steps - state.global_step) * dt / steps
            parts = [f"step {state.global_step}/{state.max_steps}"]
            for key in ("loss", "eval_loss", "learning_rate"):
                if key in logs:
                    parts.append(f"{key} {logs[key]:.4g}")
            parts += [f"{tok_s:.0f} tok/s", f"ETA {eta / 60:.1f} min"]
            extra = {"tokens_per_second": round(tok_s, 1),
                     "elapsed_s": round(dt, 1)}  # training time so far: where a checkpoint sits on a learning curve
            logs.update(extra)
            # The Trainer appended a copy of ``logs`` to log_history before calling us: record them there too
            # (the manifest's log_history and each checkpoint's trainer_state.json).
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(extra)
            log("  ".join(parts))

    return Progress()


def _check_reasons(cfg: TrainConfig, data, records) -> None:
    """A schema with a reason per match (v2) trains on each element's label.matches[].reason: records without
    them are refused up front, by file and line, before any model is loaded (never trained with empty reasons)."""
    if not has_reason(cfg.schema_name):
        return
    lines = dict(zip((r.id for r in data.records), data.line_numbers))
    lacking = [r for r in records if r.label is not None and any(not m.reason for m in r.label.matches)]
    if lacking:
        where = ", ".join(f"line {lines[r.id]} ({r.id})" if r.id in lines else r.id for r in lacking[:5])
        raise UserError(f"{cfg.train_data}: schema {cfg.schema_name} trains on a reason before each match, and "
                        f"{len(lacking)} record(s) have a label.matches[] without a \"reason\": {where}"
                        f"{' ...' if len(lacking) > 5 else ''}; add them (the demo data has them), or train v1 or v3")


def train(cfg: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = print) -> TrainResult:
    """Train and export the adapter. Under `torchrun` / `accelerate launch` every process runs this; the first
    (RANK 0) alone logs and writes the adapter, the others return an empty manifest."""
    data_file = cfg.training_file()  # refused before anything is imported or loaded
    if os.environ.get("RANK", "0") != "0":
        log = _silent
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import PrinterCallback, TrainingArguments, set_seed

    from .labelled_logits import trainer_class

    started = datetime.now(timezone.utc)
    set_seed(cfg.seed)
    plan = hardware.plan(cfg.quantization, cfg.compute_dtype)
    for note in plan.notes:
        log(note)
    prompt = cfg.prompt()  # a bad template is refused before the model loads
    if not prompt.builtin:
        log(f"prompt: {prompt.source} (hash {prompt.fingerprint(cfg.schema_name)})")
    model_path = str(model_folder(cfg.base_model, log))  # a hub id: its snapshot in the local HF cache (hashed)

    data = load_dataset(data_file)
    train_recs, eval_recs, data_mix = training_data(cfg, data.records)
    if cfg.augment_boundary or cfg.oversample_where:
        log(f"data mix: {data_mix['base_records']} records"
            + (f" + {data_mix['oversample_added']} repeats of the {data_mix['oversample_selected']} where "
               f"{cfg.oversample_where} (x{cfg.oversample_factor})" if cfg.oversample_where else "")
            + (f" + {data_mix['augment_boundary']} generated boundary records" if data_mix["augment_boundary"] else "")
            + f" = {data_mix['train_examples']} training examples; risk levels {data_mix['train_risk_levels']}")

    _check_reasons(cfg, data, train_recs + eval_recs)
    check_renders(prompt, train_recs + eval_recs, cfg.schema_name)
    model, tokenizer = load_base(model_path, plan, cfg)
    too_long = []
    train_feats, eval_feats = [], []
    for recs, out in ((train_recs, train_feats), (eval_recs, eval_feats)):
        for rec in recs:
            feats = build_features(tokenizer, rec, cfg.schema_name, prompt)
            if len(feats.input_ids) > cfg.max_seq_len:
                too_long.append(f"{rec.id} ({len(feats.input_ids)} tokens)")
            out.append(feats.as_dict())
    if too_long:
        raise UserError(f"{cfg.train_data}: {len(too_long)} record(s) exceed max_seq_len={cfg.max_seq_len}: "
                        f"{', '.join(too_long[:5])}; raise max_seq_len (nothing is truncated silently)")
    log(f"{len(train_feats)} training records, {len(eval_feats)} held out for eval loss; "
        f"mean length {sum(len(f['input_ids']) for f in train_feats) / len(train_feats):.0f} tokens, "
        f"of which trained {sum(sum(1 for x in f['labels'] if x != -100) for f in train_feats) / len(train_feats):.0f}")

    if plan.quantization == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                      target_modules=target_modules_for(model, cfg.modules), task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)

    out_dir = _adapter_dir(cfg)
    ckpt_dir = out_dir.with_name(out_dir.name + ".checkpoints")
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.per_device_batch,
        per_device_eval_batch_size=cfg.per_device_batch,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if eval_feats else "no",
        eval_steps=cfg.save_steps if eval_feats else None,
        bf16=plan.compute_dtype == "bf16",
        use_cpu=plan.device == "cpu",
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        train_sampling_strategy=cfg.train_sampling,
        remove_unused_columns=False,
        dataloader_pin_memory=plan.device == "cuda",
        optim="adamw_torch",
        disable_tqdm=True,
        prediction_loss_only=True,  # eval needs the loss only: never gather [batch, seq, vocab] logits
        ddp_find_unused_parameters=False,  # under torchrun every LoRA weight is used in each step
    )
    trainer = trainer_class(cfg.labelled_logits)(model=model, args=args, train_dataset=train_feats, eval_dataset=eval_feats or None,
                      data_collator=make_collator(tokenizer), callbacks=[_progress_callback(log)])
    trainer.remove_callback(PrinterCallback)  # our progress line replaces its raw dicts
    if resume and not any(ckpt_dir.glob("checkpoint-*")):
        log(f"--resume: no checkpoint in {ckpt_dir}, starting from the beginning")
        resume = False
    t0 = time.time()
    peak_before = _peak_rss_mb()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.time() - t0
    final_eval = _final_eval(trainer) if eval_feats else {}

    if not trainer.is_world_process_zero():
        return TrainResult(out_dir, {})
    tmp = out_dir.with_name(out_dir.name + ".part")
    model.save_pretrained(tmp, safe_serialization=True)
    adapter_cfg = json.loads((tmp / "adapter_config.json").read_text())
    problems = adapter_problems(adapter_cfg, cfg.max_lora_rank_serving)
    if problems:
        raise UserError("the trained adapter would be refused by vLLM:\n  " + "\n  ".join(problems))
    tokens = trainer.state.num_input_tokens_seen or 0
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "kind": "lora-adapter",
        "base_model": {"name": default_model_label(cfg.base_model), **describe_path(model_path)},
        "data": {"path": cfg.train_data, "sha256": file_sha256(cfg.train_data), "train_records": len(train_feats),
                 "eval_records": len(eval_feats), "train_ids_first_last": [train_recs[0].id, train_recs[-1].id]},
        "data_mix": data_mix,
        "schema": {"name": cfg.schema_name, "hash": schema_hash(load_schema(cfg.schema_name))},
        "prompt": prompt.describe(cfg.schema_name),
        "config": cfg.model_dump(mode="json"),
        "hardware": {"device": plan.device, "quantization": plan.quantization, "compute_dtype": plan.compute_dtype, "notes": list(plan.notes)},
        "results": {"train_loss": result.training_loss, "eval_loss": final_eval.get("eval_loss"),
                    "steps": trainer.state.global_step, "seconds": round(seconds, 1),
                    "tokens_seen": int(tokens), "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
                    "peak_rss_mb": max(_peak_rss_mb(), peak_before),
                    "log_history": trainer.state.log_history},
        "versions": _versions(),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    plot_losses(trainer.state.log_history, tmp / LOSS_PLOT, title=f"{out_dir.name}: {default_model_label(cfg.base_model)}")
    if out_dir.exists():
        import shutil
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    loss = manifest["results"]["eval_loss"]
    log(f"adapter written to {out_dir} (train loss {result.training_loss:.4f}"
        + (f", eval loss {loss:.4f}" if loss is not None and not math.isnan(loss) else "") + f", {seconds / 60:.1f} min)")
    return TrainResult(out_dir, manifest)


LOSS_PLOT = "loss.png"


def plot_losses(log_history: list[dict[str, Any]], path: Path, title: str = "") -> bool:
    """Train and eval loss against the optimizer step (the Trainer's log history) as a PNG; False, and no
    file, when nothing was logged."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for points, label, style in ((train, "train loss", "-o"), (evals, "eval loss (held-out records)", "--s")):
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, markersize=3, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean cross-entropy per answer token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
