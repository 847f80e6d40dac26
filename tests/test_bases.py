"""Defaults from what the user gave (issue 28): an adapter's base is the default model, a model that is not that
base nor made from it is refused before any engine starts, hub ids resolve through the local Hugging Face cache,
and vLLM's own engine arguments pass through, checked.

The refusals are checked through the commands, with nothing started; the happy paths on the real trainer, the
real NF4 rounding and the real vLLM engine (SmolLM2, the fast second model)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patent_risk.schemas.errors import UserError

from .conftest import EVAL, TRAIN, _train_tiny

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "tiny-org/tiny-chat"


def _cli(module: str, *args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"patent_risk.cli.{module}", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


# --- engine arguments: pure -------------------------------------------------------------------------------------

def test_engine_args_are_checked_against_vllms_engine_args():
    from patent_risk.runtime.engine_args import lora_rank, output_changing, parse_engine_args

    args = parse_engine_args(["max_num_seqs=8", "--enforce-eager=true", "kv_cache_dtype=fp8", "max_lora_rank=32"])
    assert args == {"max_num_seqs": 8, "enforce_eager": True, "kv_cache_dtype": "fp8", "max_lora_rank": 32}
    # scheduling, placement and compilation do not change a greedy run's tokens; a KV cache dtype does
    assert output_changing(args) == {"kv_cache_dtype": "fp8"}
    assert lora_rank([16], args) == 32 and lora_rank([16, 8], {}) == 16
    with pytest.raises(UserError, match="did you mean max_num_seqs"):
        parse_engine_args(["max_num_seq=8"])
    with pytest.raises(UserError, match="use --max-model-len"):
        parse_engine_args(["max_model_len=4096"])
    with pytest.raises(UserError, match="use --model"):
        parse_engine_args(["model=x"])
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_engine_args(["max_num_seqs"])


def test_a_runs_identity_holds_only_the_engine_args_that_change_outputs():
    from patent_risk.evaluate.provenance import identity

    base = {"engine_args": {"max_num_seqs": 8, "enforce_eager": True}}
    other = {"engine_args": {"max_num_seqs": 2}}
    assert identity(base)["engine_args"] == identity(other)["engine_args"] == {}
    assert identity({"engine_args": {"kv_cache_dtype": "fp8"}})["engine_args"] == {"kv_cache_dtype": "fp8"}
    assert identity({})["engine_args"] == {}  # a run written before engine arguments existed


def test_engine_arg_refusals_through_the_command_start_nothing(tmp_path):
    for arg, want in (("max_num_seq=8", "did you mean max_num_seqs"), ("max_model_len=512", "use --max-model-len"),
                      ("enable_lora=false", "use --adapter")):
        started = time.monotonic()
        done = _cli("evaluate", "batch", "--data", str(EVAL), "--out", str(tmp_path / "run"), "--limit", "1",
                    "--constrained", "--engine-arg", arg)
        assert done.returncode != 0 and want in done.stderr, done.stderr
        assert time.monotonic() - started < 30
    assert not (tmp_path / "run").exists()


# --- the adapter's base -----------------------------------------------------------------------------------------

def _config_only(adapter: Path, dest: Path, base: str) -> Path:
    """An adapter folder as another trainer leaves it: adapter_config.json (naming its base) and weights only."""
    dest.mkdir(parents=True)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = base
    (dest / "adapter_config.json").write_text(json.dumps(cfg))
    shutil.copy2(adapter / "adapter_model.safetensors", dest)
    return dest


def test_the_base_comes_from_the_manifest_or_else_adapter_config(smollm2_adapter, smollm2_model, tmp_path):
    from patent_risk.runtime.bases import adapter_base, settle_model

    logged: list[str] = []
    assert adapter_base(smollm2_adapter).source == "manifest.json"
    assert settle_model(None, [smollm2_adapter], log=logged.append) == str(smollm2_model)
    assert "manifest.json" in logged[0]
    bare = _config_only(smollm2_adapter, tmp_path / "elsewhere", str(smollm2_model))
    assert not (bare / "manifest.json").exists()
    assert settle_model(None, [bare], log=logged.append) == str(smollm2_model)
    assert "adapter_config.json" in logged[-1]


def test_an_unrelated_model_is_refused_and_a_derived_one_accepted(smollm2_adapter, smollm2_model, gemma_model, tmp_path):
    from patent_risk.runtime.artifacts import dir_sha256
    from patent_risk.runtime.bases import settle_model, shape_problem

    with pytest.raises(UserError) as refused:
        settle_model(str(gemma_model), [smollm2_adapter], log=lambda s: None)
    msg = str(refused.value)
    assert str(gemma_model) in msg and str(smollm2_adapter) in msg and "--allow-other-base" in msg
    warned: list[str] = []
    assert settle_model(str(gemma_model), [smollm2_adapter], allow_other_base=True, log=warned.append) == str(gemma_model)
    assert warned and warned[0].startswith("warning:")
    # a copy is the same model by content, whatever its path
    copy = tmp_path / "copy"
    shutil.copytree(smollm2_model, copy)
    assert settle_model(str(copy), [smollm2_adapter], log=lambda s: None) == str(copy)
    # a model whose manifest records it was made from the base (an nf4-base or merge output) counts as the base
    derived = tmp_path / "derived"
    shutil.copytree(smollm2_model, derived)
    (derived / "model.safetensors").write_bytes(b"other weights")
    (derived / "merge_manifest.json").write_text(json.dumps({"base_model": {"sha256": dir_sha256(smollm2_model)}}))
    assert settle_model(str(derived), [smollm2_adapter], log=lambda s: None) == str(derived)
    (derived / "merge_manifest.json").write_text(json.dumps({"base_model": {"sha256": "0" * 64}}))
    with pytest.raises(UserError, match="nor made from it"):
        settle_model(str(derived), [smollm2_adapter], log=lambda s: None)
    # where the recorded base is not on this machine, the adapter's shapes decide
    assert shape_problem(smollm2_adapter, smollm2_model) is None
    assert "hidden size" in shape_problem(smollm2_adapter, gemma_model)


def test_commands_refuse_an_unrelated_model_before_any_engine_starts(smollm2_adapter, gemma_model, tmp_path):
    for module, args in (
        ("evaluate", ["batch", "--data", str(EVAL), "--out", str(tmp_path / "run"), "--limit", "1", "--constrained"]),
        ("serve", ["start", "--port", "8791"]),
        ("train", ["merge", str(smollm2_adapter), "--out", str(tmp_path / "merged"), "--onto", "unquantized"]),
    ):
        adapter = [] if module == "train" else ["--adapter", f"mine={smollm2_adapter}"]
        model = ["--base" if module == "train" else "--model", str(gemma_model)]
        started = time.monotonic()
        done = _cli(module, *args, *adapter, *model)
        assert done.returncode != 0, (module, done.stdout, done.stderr)
        assert "is not the base" in done.stderr and str(smollm2_adapter) in done.stderr, (module, done.stderr)
        assert time.monotonic() - started < 60, module
        assert "vLLM" not in done.stderr.split("is not the base")[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "merged").exists()


# --- hub ids through the local Hugging Face cache ----------------------------------------------------------------

def _hub_cache(home: Path, tokenizer_from: Path) -> Path:
    """A Hugging Face cache holding HUB_ID: a tiny randomly initialised Llama in bfloat16 with SmolLM2's tokenizer
    (and chat template), laid out as `hf download` leaves it (refs/main -> snapshots/<commit>)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    repo = home / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(snap, safe_serialization=True)
    for f in tokenizer_from.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")) or f.suffix in (".txt",):
            shutil.copy2(f, snap / f.name)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_a_hub_id_resolves_offline_through_the_cache_and_keeps_its_dtype(smollm2_model, tmp_path):
    """Train a QLoRA adapter on a hub id and round its base through NF4, with the hub out of reach: both read the
    model from HF_HOME's cache; the NF4-rounded base is written in the base's bfloat16 and records its lineage."""
    from safetensors import safe_open

    from patent_risk.runtime.artifacts import dir_sha256

    home = tmp_path / "hf"
    snap = _hub_cache(home, smollm2_model)
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PATENT_RISK_HOME": str(tmp_path / "pr")}
    adapter = tmp_path / "adapter"
    done = _cli("train", "qlora", "--config", "demo", "-s", f"base_model={HUB_ID}", "-s", "quantization=nf4",
                "-s", f"train_data={TRAIN}", "-s", "limit=2", "-s", "max_steps=1", "-s", "dev_size=0",
                "-s", "eval_fraction=0.0", "-s", f"output_dir={adapter}", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["config"]["base_model"] == HUB_ID
    assert manifest["base_model"]["sha256"] == dir_sha256(snap)  # hashed by content, not by name
    done = _cli("train", "nf4-base", str(adapter), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = Path(done.stdout.strip().splitlines()[-1])
    doc = json.loads((out / "nf4_base_manifest.json").read_text())
    assert doc["dtype"] == "bfloat16" and dir_sha256(snap) in doc["lineage"]
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    # `train merge` folds the adapter into that NF4-rounded base, in the same dtype, and counts as made from the base
    merged = tmp_path / "merged"
    done = _cli("train", "merge", str(adapter), "--out", str(merged), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    with safe_open(merged / "model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    from patent_risk.runtime.bases import lineage

    assert dir_sha256(snap) in lineage(out) and dir_sha256(snap) in lineage(merged)


def test_a_hub_id_not_in_the_cache_offline_names_the_model_and_how_to_log_in(tmp_path):
    home = tmp_path / "hf"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "manifest.json").write_text(json.dumps({"config": {"base_model": "google/gemma-3-4b-it", "double_quant": True},
                                                       "hardware": {"quantization": "nf4"}}))
    done = _cli("train", "nf4-base", str(adapter), env={"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    assert done.returncode != 0
    assert "google/gemma-3-4b-it" in done.stderr and "hf auth login" in done.stderr and "HF_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr


# --- the real engine --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nf4_smollm2_adapter(tmp_path_factory, smollm2_model) -> Path:
    """A QLoRA adapter on SmolLM2 trained with a prompt template of its own (tests/test_prompt_template.py's)."""
    from .test_prompt_template import write_template

    folder = tmp_path_factory.mktemp("adapter")
    return _train_tiny(folder / "q", smollm2_model, 4, "quantization=nf4", "compute_dtype=fp32", "max_steps=2",
                       f"prompt_template={write_template(folder)}")


def test_without_model_or_prompt_the_adapters_own_are_used_and_engine_args_reach_vllm(
        nf4_smollm2_adapter, smollm2_model, smollm2_tokenizer, short_eval, tmp_path):
    from patent_risk.schemas.prompt import prompt_from_record
    from patent_risk.schemas.records import load_dataset
    from patent_risk.train.features import prompt_ids

    run = tmp_path / "run"
    done = _cli("evaluate", "batch", "--data", str(short_eval), "--out", str(run), "--limit", "1", "--constrained",
                "--adapter", f"q={nf4_smollm2_adapter}", "--engine-arg", "max_num_seqs=8")
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((run / "run.json").read_text())
    assert doc["base_model"]["path"] == str(smollm2_model)
    assert doc["engine_args"] == {"max_num_seqs": 8}
    assert doc["engine"]["engine_args_applied"] == {"max_num_seqs": 8}  # read back from vLLM's own config
    assert doc["engine"]["max_lora_rank"] == 16
    # the prompt the adapter was trained with, by default: same hash, and the engine saw its tokens
    recorded = json.loads((nf4_smollm2_adapter / "manifest.json").read_text())["prompt"]
    assert recorded["version"] == "template" and "Patent {{ patent_id }}" in recorded["template"]
    assert doc["prompt"]["hash"] == recorded["hash"]
    (row,) = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    rec = load_dataset(short_eval).records[0]
    assert row["prompt_tokens"] == len(prompt_ids(smollm2_tokenizer, rec, "v1", prompt_from_record(recorded, "m")))


def test_the_nf4_base_of_the_adapter_is_accepted_as_its_base(nf4_smollm2_adapter, short_eval, tmp_path, monkeypatch):
    from patent_risk.train.merge import base_of
    from patent_risk.train.nf4_base import nf4_base

    monkeypatch.setenv("PATENT_RISK_HOME", str(tmp_path))
    rounded = nf4_base(base_of(nf4_smollm2_adapter, None, False, lambda s: None), log=lambda s: None)
    run = tmp_path / "run"
    done = _cli("evaluate", "batch", "--data", str(short_eval), "--out", str(run), "--limit", "1", "--constrained",
                "--adapter", f"q={nf4_smollm2_adapter}", "--model", str(rounded))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["base_model"]["path"] == str(rounded)
