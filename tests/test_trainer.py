"""The trainer: typed config, vLLM's refusal rules, the exported adapter, merge and resume."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from patent_risk.runtime.adapters import adapter_problems, check_adapter_dir
from patent_risk.schemas.errors import UserError
from patent_risk.train.config import TrainConfig, load_config

from .conftest import ROOT, TINY_RECIPE, TRAIN


def test_defaults_are_the_seed_recipe():
    cfg = TrainConfig()
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (16, 32, 0.05)
    assert cfg.modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (cfg.epochs, cfg.per_device_batch, cfg.grad_accum, cfg.learning_rate, cfg.warmup_ratio) == (3, 2, 8, 2e-4, 0.03)
    assert cfg.quantization == "auto" and cfg.double_quant
    seed = load_config(ROOT / "train/configs/seed.yaml")
    assert seed.base_model == "google/gemma-3-4b-it" and seed.quantization == "nf4"
    # issue 28: no config trains on a file the user did not name; the demo recipe names the demo data itself
    assert cfg.train_data is None and seed.train_data is None
    assert load_config(None).train_data == "data/demo/train.jsonl"
    assert TrainConfig(include_mlp=True).modules[-3:] == ["gate_proj", "up_proj", "down_proj"]


def test_the_seed_recipe_without_train_data_is_refused_at_once_naming_the_key(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from patent_risk.cli.train import main

    monkeypatch.chdir(tmp_path)  # a user's folder: the packaged recipe is found by its name or its repository path
    for config in ("train/configs/seed.yaml", "seed", str(ROOT / "train/configs/seed.yaml")):
        t0 = time.monotonic()
        done = CliRunner().invoke(main, ["qlora", "--config", config])
        assert done.exit_code == 2 and "train_data is not set" in done.output and "-s train_data=FILE" in done.output, done.output
        assert time.monotonic() - t0 < 5  # before any model or trainer import
    shown = CliRunner().invoke(main, ["qlora", "--config", "seed", "-s", f"train_data={TRAIN}", "--print-config"])
    assert shown.exit_code == 0 and f"train_data: {TRAIN}" in shown.output, shown.output
    from patent_risk.train.trainer import train

    with pytest.raises(UserError, match="train_data is not set"):  # the library refuses it too
        train(TrainConfig())


def test_an_unknown_key_names_the_closest_and_help_lists_every_key(tmp_path):
    from click.testing import CliRunner

    from patent_risk.cli.train import main

    done = CliRunner().invoke(main, ["qlora", "-s", "lerning_rate=1e-4", "-s", "epoch=2", "-s", "zzz=1"])
    assert done.exit_code == 2, done.output
    lines = done.output.splitlines()
    assert "-s lerning_rate=1e-4: unknown key 'lerning_rate': did you mean learning_rate?" in lines[0]
    assert "-s epoch=2: unknown key 'epoch': did you mean epochs?" in lines[1]
    assert "unknown key 'zzz': (" in lines[2]
    config = tmp_path / "c.yaml"
    config.write_text("train_data: x.jsonl\nlora_rank: 8\n")
    in_file = CliRunner().invoke(main, ["qlora", "--config", str(config)])
    assert in_file.exit_code == 2 and f"{config}: unknown key 'lora_rank': did you mean lora_r or " in in_file.output
    helped = CliRunner().invoke(main, ["qlora", "--help"])
    assert helped.exit_code == 0
    listed = {line.split()[0] for line in helped.output.splitlines() if line.startswith("    ") and not line.startswith("      ")}
    assert listed == set(TrainConfig.model_fields), set(TrainConfig.model_fields) ^ listed
    assert "    learning_rate (0.0002)" in helped.output and "    train_data (null): " in helped.output


@pytest.mark.parametrize("double_quant", [True, False])
def test_quantization_config_honours_double_quant(double_quant):
    from patent_risk.train.trainer import quantization_config

    q = quantization_config(TrainConfig(double_quant=double_quant), torch.bfloat16)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4"
    assert q.bnb_4bit_use_double_quant is double_quant
    assert q.bnb_4bit_compute_dtype == q.bnb_4bit_quant_storage == torch.bfloat16


def test_no_config_is_the_demo_recipe_and_overrides_apply():
    cfg = load_config(None, ["epochs=2", "learning-rate=5e-4", "target_modules=[q_proj, v_proj]"])
    assert cfg.base_model is None and cfg.epochs == 2 and cfg.learning_rate == 5e-4
    assert cfg.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize("override,needle", [
    ("lora_r=12", "vLLM serves ranks"),
    ("lora_r=32", "above max_lora_rank_serving=16"),
    ("quantization=int8", "quantization"),
    ("no_such_field=1", "no_such_field"),
    ("epochs", "expected key=value"),
])
def test_bad_config_is_one_clear_message(override, needle):
    with pytest.raises(UserError, match=needle):
        load_config(None, [override])


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(UserError, match=str(bad)):
        load_config(bad)


@pytest.mark.parametrize("change,needle", [
    ({"use_dora": True}, "DoRA"),
    ({"bias": "all"}, "bias"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"r": 12}, "not one vLLM serves"),
    ({"r": 32}, "--max-lora-rank 32"),
])
def test_vllm_refusal_rules(change, needle):
    base = {"r": 16, "lora_alpha": 32, "bias": "none", "peft_type": "LORA", "modules_to_save": None}
    assert adapter_problems(base) == []
    problems = adapter_problems({**base, **change})
    assert len(problems) == 1 and needle in problems[0]
    assert adapter_problems({**base, "modules_to_save": ["score"]}) == []


def test_v2_training_refuses_records_without_reasons_before_loading_a_model(tmp_path, embedded_model):
    """A v2 answer needs each element's reason: records without one are named by file and line up front,
    never trained with empty reasons."""
    from patent_risk.train.trainer import train

    lines = TRAIN.read_text(encoding="utf-8").splitlines()[:6]
    bare = []
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if i in (1, 4):
            for m in rec["label"]["matches"]:
                m.pop("reason")
        bare.append(json.dumps(rec, ensure_ascii=False))
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(bare) + "\n", encoding="utf-8")
    cfg = load_config(None, [f"base_model={embedded_model}", f"train_data={data}", "dev_size=0", "schema_name=v2",
                             f"output_dir={tmp_path / 'a'}"])
    with pytest.raises(UserError, match=r"schema v2 trains on a reason.*2 record\(s\).*line 2 \(train-0002\), line 5 \(train-0005\)"):
        train(cfg, log=lambda s: None)
    assert not (tmp_path / "a").exists()


def test_pickled_weights_are_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16, "peft_type": "LORA"}))
    (tmp_path / "adapter_model.bin").write_bytes(b"\0")
    with pytest.raises(UserError, match="pickled weights are not loaded"):
        check_adapter_dir(tmp_path)


def test_exported_adapter_and_manifest(trained_adapter):
    cfg = check_adapter_dir(trained_adapter)
    assert cfg["r"] == 16 and sorted(cfg["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    manifest = json.loads((trained_adapter / "manifest.json").read_text())
    for key in ("base_model", "data", "schema", "config", "results", "hardware", "versions"):
        assert key in manifest
    assert manifest["base_model"]["sha256"] and manifest["data"]["sha256"] and manifest["schema"]["name"] == "v1"
    assert manifest["results"]["steps"] == 8 and manifest["results"]["train_loss"] > 0
    mix = manifest["data_mix"]  # no mix configured: the first 16 records in file order, nothing added
    assert (mix["base_records"], mix["train_examples"], mix["augment_boundary"], mix["shuffled"]) == (16, 16, 0, False)
    assert manifest["config"]["augment_boundary"] == 0 and manifest["config"]["oversample_where"] is None
    assert not list(trained_adapter.glob("*.bin"))
    # the loss curve beside the manifest: train (every logging step) and eval loss against the step
    assert manifest["config"]["labelled_logits"] is True
    assert (trained_adapter / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_loss_plot_needs_something_logged(tmp_path):
    from patent_risk.train.trainer import plot_losses

    assert plot_losses([{"train_runtime": 1.0}], tmp_path / "none.png") is False and not (tmp_path / "none.png").exists()
    assert plot_losses([{"step": 5, "loss": 0.8}, {"step": 5, "eval_loss": 0.9}, {"step": 10, "loss": 0.2}], tmp_path / "l.png")
    assert (tmp_path / "l.png").stat().st_size > 1000


def test_merged_model_equals_the_adapter(trained_adapter, embedded_model, tokenizer, eval_records, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from patent_risk.train.features import prompt_ids
    from patent_risk.train.merge import merge

    out = merge(trained_adapter, tmp_path / "merged", log=lambda s: None)
    ids = torch.tensor([prompt_ids(tokenizer, eval_records[0])])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32)
        adapted = PeftModel.from_pretrained(base, trained_adapter)(ids).logits
        plain = base.get_base_model()(ids).logits if hasattr(base, "get_base_model") else None
    torch.testing.assert_close(merged, adapted, atol=2e-4, rtol=1e-4)
    assert plain is None or not torch.allclose(merged, plain, atol=1e-3)


def _train_cmd(out):
    pinned = [a for item in TINY_RECIPE for a in ("-s", item)]  # the demo config's 80 steps are not this test's
    return [sys.executable, "-m", "patent_risk.cli.train", "qlora", *pinned, "-s", f"train_data={TRAIN}", "-s", "limit=12", "-s", "eval_fraction=0",
            "-s", f"output_dir={out}", "-s", "save_steps=2", "-s", "logging_steps=1", "-s", "save_total_limit=10"]


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_adapter(tmp_path):
    from safetensors.torch import load_file

    whole = tmp_path / "whole"
    subprocess.run(_train_cmd(whole), check=True, capture_output=True, cwd=ROOT)
    broken = tmp_path / "broken"
    proc = subprocess.Popen(_train_cmd(broken), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                            start_new_session=True)
    ckpt = broken.with_name("broken.checkpoints") / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 600
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (broken / "adapter_model.safetensors").exists()
    subprocess.run(_train_cmd(broken) + ["--resume"], check=True, capture_output=True, cwd=ROOT)
    a = load_file(whole / "adapter_model.safetensors")
    b = load_file(broken / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
