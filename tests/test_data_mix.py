"""The training data mix: boundary augmentation and oversampling, pure (no model) except one tiny run."""
import hashlib
import json
from collections import Counter

import pytest

from patent_risk.datagen.demo import PATENTS
from patent_risk.schemas.errors import UserError
from patent_risk.schemas.records import Record, load_dataset
from patent_risk.train.config import TrainConfig, load_config
from patent_risk.train.data_mix import build_training_mix, split_records, training_data

from .conftest import EVAL, TRAIN

SUMMARY_KEYS = {"base_records", "held_out_records", "base_risk_levels", "augment_boundary", "augment_seed",
                "augment_patents", "augment_risk_levels", "oversample_where", "oversample_factor",
                "oversample_selected", "oversample_added", "shuffled", "train_examples", "train_risk_levels",
                "train_ids_sha256", "train_records_sha256"}


@pytest.fixture(scope="module")
def records():
    return load_dataset(TRAIN).records


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"train_data": str(TRAIN), "limit": 40, "eval_fraction": 0.1, **kw})


def test_no_mix_is_the_old_split_and_limit(records):
    cfg = _cfg()
    train, held, summary = training_data(cfg, records)
    old_train, old_held = split_records(records, 0.1, cfg.seed)
    assert [r.id for r in train] == [r.id for r in old_train[:40]]  # file order, not shuffled
    assert [r.id for r in held] == [r.id for r in old_held]
    assert set(summary) == SUMMARY_KEYS
    assert summary["base_records"] == summary["train_examples"] == 40 and summary["held_out_records"] == len(held) == 72
    assert (summary["augment_boundary"], summary["augment_seed"], summary["oversample_added"]) == (0, None, 0)
    assert summary["shuffled"] is False


def test_counts_multiplicities_and_summary(records):
    cfg = _cfg(augment_boundary=12, oversample_where="meta.near_boundary", oversample_factor=3)
    train, held, summary = training_data(cfg, records)
    base = split_records(records, 0.1, cfg.seed)[0][:40]
    truthy = {r.id for r in base if r.meta["near_boundary"]}
    assert 0 < len(truthy) < 40
    counts = Counter(r.id for r in train)
    assert {i: counts[i] for i in (r.id for r in base)} == {r.id: 3 if r.id in truthy else 1 for r in base}
    generated = [r for r in train if r.id.startswith("aug-")]
    assert len(generated) == 12 and all(counts[r.id] == 1 for r in generated)
    assert len(train) == 40 + 2 * len(truthy) + 12
    assert all(isinstance(r, Record) for r in train)
    assert summary == {**summary, "base_records": 40, "held_out_records": len(held), "augment_boundary": 12,
                       "augment_seed": cfg.seed, "oversample_where": "meta.near_boundary", "oversample_factor": 3,
                       "oversample_selected": len(truthy), "oversample_added": 2 * len(truthy),
                       "shuffled": True, "train_examples": len(train)}
    assert sum(summary["train_risk_levels"].values()) == len(train)
    assert summary["augment_risk_levels"] == dict(sorted(Counter(r.label.risk_level for r in generated).items()))
    ids = json.dumps([r.id for r in train], ensure_ascii=False, separators=(",", ":")).encode()
    assert summary["train_ids_sha256"] == hashlib.sha256(ids).hexdigest()
    # shuffled through: generated records are not all at the end
    assert any(r.id.startswith("aug-") for r in train[: len(train) // 2])


def test_deterministic_and_seeded(records):
    cfg = _cfg(augment_boundary=10, oversample_where="meta.near_boundary", oversample_factor=2)
    a, _, sa = training_data(cfg, records)
    b, _, sb = training_data(cfg, records)
    assert [r.to_json() for r in a] == [r.to_json() for r in b] and sa == sb
    c, _, sc = training_data(_cfg(augment_boundary=10, oversample_where="meta.near_boundary", oversample_factor=2,
                                  seed=7), records)
    assert sc["train_ids_sha256"] != sa["train_ids_sha256"]
    assert sc["augment_seed"] == 7 and all(r.id.startswith("aug-7-") for r in c if r.id.startswith("aug-"))


def test_held_out_slice_is_untouched(records):
    plain = training_data(_cfg(), records)[1]
    train, held, _ = training_data(_cfg(augment_boundary=30, oversample_where="meta.near_boundary",
                                        oversample_factor=4), records)
    assert [r.to_json() for r in held] == [r.to_json() for r in plain]
    held_ids = {r.id for r in held}
    assert not held_ids & {r.id for r in train}
    generated_queries = {r.query for r in train if r.id.startswith("aug-")}
    assert len(generated_queries) == 30
    assert not generated_queries & {r.query for r in held}
    assert not generated_queries & {r.query for r in load_dataset(EVAL).records}
    assert not generated_queries & {r.query for r in records}


def test_generated_records_are_valid_exact_and_for_the_trained_patents(records):
    one = PATENTS[2].patent_id
    base = [r for r in records if r.patent_id == one][:10]
    mixed, summary = build_training_mix(_cfg(augment_boundary=9), base)
    generated = [r for r in mixed if r.id.startswith("aug-")]
    assert summary["augment_patents"] == [one] and {r.patent_id for r in generated} == {one}
    assert all(type(r) is Record and r.meta["augmented"] and abs(r.meta["boundary_distance"]) <= 0.15 for r in generated)
    spec = PATENTS[2]
    assert all(r.claim == spec.claim and r.element_ids == [e.id for e in spec.elements] for r in generated)
    assert base == [r for r in records if r.patent_id == one][:10]  # the input list is not changed


def test_unknown_patent_is_refused_by_name(records):
    base = records[:5] + [records[5].model_copy(update={"patent_id": "US-9999999-B2"})]
    with pytest.raises(UserError, match=r"does not know: US-9999999-B2 .*augment_boundary=0"):
        build_training_mix(_cfg(augment_boundary=4), base)
    build_training_mix(_cfg(), base)  # without augmentation the patent is irrelevant
    changed = records[:5] + [records[5].model_copy(update={"claim": records[5].claim + " (정정)"})]
    with pytest.raises(UserError, match=f"record {records[5].id} .*claim or elements other than"):
        build_training_mix(_cfg(augment_boundary=4), changed)


def test_oversample_selects_exactly_the_truthy_records(records):
    values = {"t": True, "f": False, "one": 1, "zero": 0, "empty": "", "word": "x", "none": None, "list": [1], "nolist": []}
    base = [records[i].model_copy(update={"id": name, "meta": {"flag": {"v": v}}}) for i, (name, v) in enumerate(values.items())]
    base += [records[20].model_copy(update={"id": "nokey", "meta": {"other": 1}}),
             records[21].model_copy(update={"id": "nometa", "meta": None}),
             records[22].model_copy(update={"id": "notdict", "meta": {"flag": 5}})]
    mixed, summary = build_training_mix(_cfg(oversample_where="meta.flag.v", oversample_factor=2), base)
    assert sorted(i for i, n in Counter(r.id for r in mixed).items() if n == 2) == ["list", "one", "t", "word"]
    assert summary["oversample_selected"] == 4 and len(mixed) == len(base) + 4
    with pytest.raises(UserError, match=r"meta.near_boundry: no training record has that field \(meta keys present: "):
        build_training_mix(_cfg(oversample_where="meta.near_boundry", oversample_factor=2), records[:10])


@pytest.mark.parametrize("override,needle", [
    (["oversample_factor=3"], "needs oversample_where"),
    (["oversample_where=meta.near_boundary"], "needs oversample_factor >= 2"),
    (["oversample_where=near_boundary", "oversample_factor=2"], "expected meta.KEY"),
    (["oversample_where=meta..x", "oversample_factor=2"], "expected meta.KEY"),
    (["oversample_factor=0"], "oversample_factor"),
    (["augment_boundary=-1"], "augment_boundary"),
])
def test_bad_mix_config_is_one_clear_message(override, needle):
    with pytest.raises(UserError, match=needle):
        load_config(None, override)


def test_cli_print_config_shows_the_mix_fields():
    from click.testing import CliRunner

    from patent_risk.cli.train import main

    out = CliRunner().invoke(main, ["qlora", "-s", "augment_boundary=80", "--print-config"])
    assert out.exit_code == 0, out.output
    assert "augment_boundary: 80\noversample_where: null\noversample_factor: 1\n" in out.output


def test_demo_reuse_check_knows_the_mix(tmp_path, monkeypatch):
    from patent_risk.cli import demo
    from patent_risk.runtime.artifacts import file_sha256

    config = tmp_path / "demo.yaml"
    config.write_text(f"train_data: {TRAIN}\nlimit: 20\naugment_boundary: 6\n")
    monkeypatch.setattr(demo, "DEMO_CONFIG", str(config))
    cfg = load_config(config)
    _, _, mix = training_data(cfg, load_dataset(TRAIN).records)
    adapter = tmp_path / "adapter"
    adapter.mkdir()

    from patent_risk.runtime.artifacts import describe_path
    from patent_risk.runtime.embedded import resolve_model

    base = describe_path(resolve_model(None))

    def write(config_dump, data_mix, base_model=base):
        manifest = {"config": config_dump, "data": {"sha256": file_sha256(TRAIN)}, "data_mix": data_mix,
                    "base_model": base_model}
        (adapter / "manifest.json").write_text(json.dumps(manifest))

    write(cfg.model_dump(mode="json"), mix)
    assert demo._adapter_is_current(adapter)
    write(cfg.model_dump(mode="json"), mix, {"name": "embedded:other", "sha256": "0" * 64})  # another base model
    assert not demo._adapter_is_current(adapter)
    write(cfg.model_dump(mode="json"), {**mix, "train_records_sha256": "0" * 64})  # the generator changed since
    assert not demo._adapter_is_current(adapter)
    write({**cfg.model_dump(mode="json"), "augment_boundary": 7}, mix)
    assert not demo._adapter_is_current(adapter)
    # a manifest from before the mix fields existed: their defaults change nothing, so it still matches
    config.write_text(f"train_data: {TRAIN}\nlimit: 20\n")
    old = {k: v for k, v in load_config(config).model_dump(mode="json").items() if "oversample" not in k and "augment" not in k}
    write(old, None)
    assert demo._adapter_is_current(adapter)


@pytest.mark.slow
def test_trained_adapter_records_the_mix(tmp_path, embedded_model):
    """Opt-in: a real run of one optimizer step, measured at 30-70 s on a 2-core machine under others'
    load. The default suite checks the manifest's data_mix on the shared `trained_adapter` (test_trainer.py)."""
    from patent_risk.train.trainer import train

    cfg = load_config(None, [f"train_data={TRAIN}", "dev_size=0", "limit=16", "eval_fraction=0.0", f"output_dir={tmp_path / 'a'}",
                             "augment_boundary=2", "oversample_where=meta.near_boundary", "oversample_factor=2",
                             "max_steps=1", "per_device_batch=1", "save_steps=1000", "logging_steps=1"])
    lines = []
    result = train(cfg, log=lines.append)
    manifest = json.loads((result.adapter_dir / "manifest.json").read_text())
    _, _, expected = training_data(cfg, load_dataset(TRAIN).records)
    assert manifest["data_mix"] == expected and expected["oversample_selected"] == 5
    assert manifest["data"]["train_records"] == expected["train_examples"] == 16 + 5 + 2
    assert manifest["config"]["augment_boundary"] == 2 and manifest["results"]["steps"] == 1
    assert any(line.startswith("data mix: 16 records + 5 repeats") for line in lines)
