"""The dev split, learning-curve points and the recipe choice rule (issue 16).

The engine tests use the session engine (the real Gemma 3 270M, LoRA enabled) and the tiny trained adapter,
whose run keeps a checkpoint at step 4 of 8.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from patent_risk.evaluate.batch import Borrowed
from patent_risk.evaluate.curve import Checkpoint, Point, checkpoints, choose, evaluate_points, write_curve
from patent_risk.runtime.engines import AdapterSpec
from patent_risk.runtime.requests import build_requests
from patent_risk.schemas.records import load_dataset
from tests.conftest import TRAIN, check_contract
from patent_risk.train.config import load_config
from patent_risk.train.data_mix import dev_split, split_records, training_data

ROOT = Path(__file__).resolve().parents[1]


def _point(variant: str, step: int, train_s: float | None, risk: float, match: float, adapter: str | None = "a") -> Point:
    return Point(variant, step, train_s, adapter, "run", 10, 1.0, risk, match, 0.5, {}, 0.4, 0.6)


def test_dev_split_is_never_trained_on_and_does_not_move_with_the_recipe_seed():
    records = load_dataset(TRAIN).records
    cfg = load_config(None, ["dev_size=120"])
    rest, dev = dev_split(cfg, records)
    assert len(dev) == 120 and len(rest) == len(records) - 120
    dev_ids = {r.id for r in dev}
    for overrides in ([], ["seed=7"], ["limit=null", "eval_fraction=0.1"], ["augment_boundary=20"]):
        c = load_config(None, ["dev_size=120", *overrides])
        train, held, mix = training_data(c, records)
        assert not dev_ids & {r.id for r in train} and not dev_ids & {r.id for r in held}
        assert mix["dev_records"] == 120
        assert {r.id for r in dev_split(c, records)[1]} == dev_ids  # the recipe's seed does not move it
    assert {r.id for r in dev_split(load_config(None, ["dev_size=120", "dev_seed=1"]), records)[1]} != dev_ids
    # dev_size 0 leaves the training list exactly as before the field existed
    no_dev = load_config(None, ["dev_size=0", "limit=null"])
    assert [r.id for r in training_data(no_dev, records)[0]] == \
        [r.id for r in split_records(records, no_dev.eval_fraction, no_dev.seed)[0]]


def test_dev_split_larger_than_the_file_is_refused():
    from patent_risk.schemas.errors import UserError

    records = load_dataset(TRAIN).records
    with pytest.raises(UserError, match="dev_size=720"):
        dev_split(load_config(None, ["dev_size=720"]), records)


def test_dev_split_command_writes_valid_records(tmp_path):
    out = tmp_path / "dev.jsonl"
    done = subprocess.run([sys.executable, "-m", "patent_risk.cli.train", "dev-split", "-s", "dev_size=30", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    dev = load_dataset(out).records
    assert [r.id for r in dev] == [r.id for r in dev_split(load_config(None, ["dev_size=30"]), load_dataset(TRAIN).records)[1]]
    refused = subprocess.run([sys.executable, "-m", "patent_risk.cli.train", "dev-split", "-s", "dev_size=0", "--out", str(tmp_path / "x.jsonl")],
                             cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode != 0 and "dev_size is 0" in refused.stderr


def test_choice_rule_takes_the_best_mean_within_the_budget_and_the_shorter_on_ties():
    pts = [_point("base", 0, 0.0, 0.9, 0.9, adapter=None),  # the untrained base is never chosen
           _point("a", 40, 100.0, 0.50, 0.70), _point("a", 80, 200.0, 0.60, 0.70),
           _point("b", 40, 150.0, 0.70, 0.60), _point("b", 80, 300.0, 0.80, 0.80)]
    assert choose(pts) is pts[4]
    assert choose(pts, budget_s=250) is pts[3]  # a-80 and b-40 tie at 0.65: b-40 trained for less
    assert choose(pts, budget_s=99) is None


def test_choice_rule_tie_goes_to_the_shorter_training():
    pts = [_point("a", 80, 200.0, 0.60, 0.70), _point("b", 40, 150.0, 0.70, 0.60)]
    assert choose(pts) is pts[1]


def test_checkpoints_of_a_real_run_carry_their_training_time(trained_adapter):
    pts = checkpoints("tiny", trained_adapter)
    assert [p.step for p in pts] == [4, 8] and [p.final for p in pts] == [False, True]
    assert pts[0].adapter.name == "checkpoint-4" and pts[1].adapter == trained_adapter
    assert 0 < pts[0].train_s < pts[1].train_s


def test_use_adapter_switches_what_the_engine_decodes_with(engine, eval_records, trained_adapter):
    """Each adapter gets a LoRA id of its own (vLLM would otherwise reuse the first one's weights); None decodes
    with the base model alone, exactly as a request without LoRA."""
    first = engine.adapter
    recs = eval_records[:3]
    reqs = build_requests(recs, "v1", False, engine.count_tokens)
    try:
        with_final = [r.raw_output for r in engine.generate(reqs)]
        engine.use_adapter(AdapterSpec("tiny-4", str(trained_adapter.with_name(trained_adapter.name + ".checkpoints") / "checkpoint-4")))
        with_ckpt = [r.raw_output for r in engine.generate(reqs)]
        engine.use_adapter(None)
        with_none = [r.raw_output for r in engine.generate(reqs)]
        base = [o.outputs[0].text for o in engine.llm.chat([r.messages for r in reqs],
                                                           [engine.sampling_params(r) for r in reqs], use_tqdm=False)]
        assert with_none == base
        assert with_ckpt != with_final  # 4 steps against 8: another adapter's weights
    finally:
        engine.use_adapter(first)
    assert [r.raw_output for r in engine.generate(reqs)] == with_final


def test_curve_points_on_one_engine(engine, trained_adapter, short_eval, tmp_path):
    first = engine.adapter
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(short_eval.read_text(encoding="utf-8").splitlines(keepends=True)[:6]), encoding="utf-8")
    points = [Checkpoint("base", 0, 0.0, None, True), *checkpoints("tiny", trained_adapter)]
    starts = []

    def make(model_path, spec):
        starts.append(spec)
        engine.use_adapter(spec)
        return Borrowed(engine)

    try:
        scored = evaluate_points(points, str(data), tmp_path, make, chunk_size=16, max_model_len=1024,
                                 log=lambda s: None, progress=False, quiet=False)
    finally:
        engine.use_adapter(first)
    assert len(starts) == 1  # one engine for all points
    n = 6
    assert [(p.variant, p.step) for p in scored] == [("base", 0), ("tiny", 4), ("tiny", 8)]
    for p in scored:
        assert p.n == n and p.json_valid == 1.0  # constrained
        info = json.loads((Path(p.run_dir) / "run.json").read_text())
        assert info["constrained"] is True
        assert (info["adapter"] is None) == (p.adapter is None)
    chosen = write_curve(scored, tmp_path, str(data), budget_s=None)
    doc = json.loads((tmp_path / "curve.json").read_text())
    assert chosen is not None and chosen.adapter is not None and doc["chosen"]["step"] == chosen.step
    assert "chosen" in (tmp_path / "curve.md").read_text()
    assert (tmp_path / "curve.png").stat().st_size > 0
    done = check_contract("run", scored[1].run_dir)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_bad_plan_is_one_line_naming_the_file_and_key(tmp_path):
    from patent_risk.cli.recipe import read_plan

    for text, needle in (("config: x\nvariants: {}\n", "missing dev_size"),
                         ("config: x\ndev_size: 1\nvariants: {}\nbudget: 3\n", "unknown key(s) budget"),
                         ("config: x\ndev_size: 1\nvariants: {a: 3}\n", "variants.a: expected a mapping"),
                         ("- a\n", "expected a mapping of plan keys")):
        plan = tmp_path / "plan.yaml"
        plan.write_text(text)
        with pytest.raises(SystemExit) as e:
            read_plan(plan)
        assert str(e.value).startswith(f"{plan}: ") and needle in str(e.value) and "\n" not in str(e.value)
    for committed in ("recipe_search", "augment_study", "nf4_study"):
        assert read_plan(ROOT / "train/configs" / f"{committed}.yaml")["variants"]
