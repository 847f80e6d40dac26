"""`make compare` (cli.compare, issue 18): one adapter per output schema, both arms each, one report."""
import json
import subprocess
import sys

import pytest

from patent_risk.schemas.output import load_schema, schema_hash

from .conftest import ROOT, check_contract


def _compare(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "patent_risk.cli.compare", *args], cwd=cwd, capture_output=True, text=True)


def test_help_teaches_and_overrides_are_checked():
    done = _compare("--help")
    assert done.returncode == 0
    assert "make compare" in done.stdout and "train/configs/seed.yaml" in done.stdout
    refused = _compare("-s", "schema_name=v2")
    assert refused.returncode == 2 and "schema_name is set per schema by the comparison itself" in refused.stderr
    refused = _compare("-s", "max_steps")
    assert refused.returncode == 2 and "expected KEY=VALUE" in refused.stderr


@pytest.mark.slow
def test_two_schemas_end_to_end(tmp_path, embedded_model):
    """The whole comparison, tiny: v2 and v3 trained for 2 steps on 8 records, 4 eval records decoded in both
    arms, one report with both schemas' names and hashes, risk_consistent and the pairs within each arm."""
    out = tmp_path / "cmp"
    args = ("--schema", "v2", "--schema", "v3", "-s", "dev_size=0", "-s", "limit=8", "-s", "max_steps=2",
            "-s", "save_steps=1000", "--limit", "4", "--out", str(out))
    done = _compare(*args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((out / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert list(metrics["runs"]) == ["v2-constrained", "v2-unconstrained", "v3-constrained", "v3-unconstrained"]
    for name, run in metrics["runs"].items():
        schema = name.split("-")[0]
        assert run["schema"] == {"name": schema, "hash": schema_hash(load_schema(schema)), "committed_hash": schema_hash(load_schema(schema))}
        assert run["n"] == 4 and run["risk_consistent"]["total"] == run["json_valid"]["count"]
        assert run["speed"]["samples_per_s"] > 0 and run["speed"]["output_tokens_per_sample"] > 0
    assert [(c["reference"], c["run"]) for c in metrics["comparisons"]] == [
        ("v2-constrained", "v3-constrained"), ("v2-unconstrained", "v3-unconstrained")]
    assert metrics["runs"]["v2-constrained"]["json_valid"]["count"] == 4
    assert check_contract("metrics", out / "report" / "metrics.json").returncode == 0
    for adapter in ("v2", "v3"):
        manifest = json.loads((out / adapter / "adapter" / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["schema"]["name"] == adapter
    timings = json.loads((out / "report" / "compare_timings.json").read_text())
    assert set(timings) >= {"train_v2", "train_v3", "evaluate_v2", "evaluate_v3", "report", "total"}
    again = _compare(*args)  # everything current: nothing is trained or decoded again
    assert again.returncode == 0 and "reusing" in again.stdout
    timings = json.loads((out / "report" / "compare_timings.json").read_text())
    assert "train_v2" not in timings


@pytest.mark.parametrize("schema,warned", [("v3", True), ("v1", False)])
def test_evaluating_an_adapter_with_another_schema_warns(trained_adapter, tmp_path, schema, warned):
    """An adapter trained on v1 decoded as v3 is a user's slip: the run says so before any engine starts."""
    from patent_risk.evaluate.batch import BatchConfig, adapter_schema, run_batch
    from patent_risk.runtime.engines import AdapterSpec

    from .conftest import EVAL

    class Stop(Exception):
        pass

    def make_engine(model_path):
        raise Stop

    assert adapter_schema(trained_adapter) == "v1" and adapter_schema(tmp_path) is None
    logs: list[str] = []
    cfg = BatchConfig(data=str(EVAL), out=str(tmp_path / "r"), constrained=True, schema_name=schema, limit=2,
                      adapter=AdapterSpec("tiny", str(trained_adapter)))
    with pytest.raises(Stop):
        run_batch(cfg, make_engine, log=logs.append, progress=False)
    said = [line for line in logs if "trained to write schema v1" in line]
    assert bool(said) is warned and (not warned or "pass --schema v1" in said[0])
