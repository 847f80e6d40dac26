"""A run's identity (evaluate.provenance), what reports say differs, record_valid, and the structured-outputs
options every path sends: pure, no engine (issue 12, items 2, 4, 5 and 11)."""
from __future__ import annotations

import copy
import json

from patent_risk.evaluate.provenance import comparison_differences, differences, identity
from patent_risk.evaluate.report import build_report
from patent_risk.runtime.requests import STRUCTURED_OUTPUT_OPTIONS, GenRequest

from .runs import output_text, write_run
from .test_report import info, row


def _run_json(**over) -> dict:
    doc = {
        "format_version": 2,
        "base_model": {"name": "embedded:gemma", "path": "/a/models/g", "sha256": "m" * 64},
        "adapter": {"name": "demo", "path": "/a/adapters/demo", "sha256": "a" * 64},
        "adapter_mode": "lora",
        "dataset": {"path": "data/demo/eval.jsonl", "sha256": "d" * 64, "records": 147, "limit": None},
        "schema": {"name": "v1", "hash": "s" * 16},
        "constrained": True, "backend": "outlines", "structured_outputs": dict(STRUCTURED_OUTPUT_OPTIONS),
        "prompt": {"version": "p1", "hash": "p" * 16},
        "engine": {"name": "vllm", "version": "0.32.0", "mode": "offline", "kv_cache_memory_bytes": 3 << 30,
                   "env": {"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4"}},
        "sampling": {"temperature": 0.0, "top_p": 1.0, "seed": 0, "max_tokens": "per record: schema budget"},
        "started_at": "2026-12-01T00:00:00+00:00",
    }
    doc.update(over)
    return doc


def test_paths_timestamps_and_machine_settings_are_not_identity():
    old = _run_json()
    new = copy.deepcopy(old)
    new["adapter"]["path"] = "/elsewhere/demo-moved"  # a moved adapter: same content hash
    new["base_model"]["path"] = "/other/home/models/g"
    new["dataset"]["path"] = "/abs/data/demo/eval.jsonl"
    new["dataset"]["limit"] = 12
    new["engine"].update(kv_cache_memory_bytes=1 << 30, env={"LD_PRELOAD": ""}, url="http://127.0.0.1:9")
    new["started_at"] = "2026-12-02T00:00:00+00:00"
    new["max_tokens"] = {"rule": "per record: schema budget", "min": 30, "max": 60, "total": 999}
    assert differences(old, new) == []


def test_every_identity_field_that_differs_is_named():
    old = _run_json()
    new = _run_json(adapter={"name": "demo", "path": "/a/adapters/demo", "sha256": "b" * 64},
                    constrained=True, backend="xgrammar", structured_outputs={},
                    prompt={"version": "p2", "hash": "q" * 16},
                    engine={"name": "vllm", "version": "0.33.0", "mode": "server"})
    new["base_model"] = {"name": "embedded:gemma", "path": "/a/models/g", "sha256": "n" * 64}
    new["dataset"] = {"path": "data/demo/eval.jsonl", "sha256": "e" * 64}
    new["schema"] = {"name": "v2", "hash": "t" * 16}
    new["sampling"] = {**old["sampling"], "seed": 1}
    fields = [line.split(":", 1)[0] for line in differences(old, new)]
    assert fields == ["base_model", "adapter", "dataset", "schema.name", "schema.hash", "backend",
                      "structured_outputs.disable_any_whitespace", "structured_outputs_config", "prompt.version", "prompt.hash", "sampling.seed",
                      "engine.version",
                      "engine.mode"]
    assert any(line.startswith('adapter: "aaaa') and '-> "bbbb' in line for line in differences(old, new))


def test_constrained_flip_and_merged_mode_are_named():
    old = _run_json()
    assert differences(old, _run_json(constrained=False, backend=None, structured_outputs=None))[0].startswith(
        "constrained: true -> false")
    assert differences(old, _run_json(adapter_mode="merged")) == ['adapter_mode: "lora" -> "merged"']


def test_runs_written_before_this_format_keep_their_identity():
    """A format-1 run.json (no structured_outputs, offline runs decoded with disable_any_whitespace)."""
    legacy = _run_json(format_version=1)
    del legacy["structured_outputs"]
    del legacy["adapter_mode"]
    assert differences(legacy, _run_json()) == []
    assert identity(legacy)["structured_outputs"] == STRUCTURED_OUTPUT_OPTIONS


def test_engine_level_structured_outputs_config_is_identity():
    """vLLM 0.32's xgrammar and guidance backends take their whitespace rule from the engine's config, not from
    the request: an xgrammar run begun before that config set disable_any_whitespace (its run.json has no
    structured_outputs_config: the backend alone) must not resume under it, mixing indented and compact
    outputs. An outlines run of that time had the same engine config as now, and resumes."""
    from patent_risk.runtime.cpu_env import structured_outputs_config

    for backend, resumes in (("xgrammar", False), ("guidance", False), ("outlines", True)):
        legacy = _run_json(format_version=2, backend=backend)
        now = _run_json(format_version=3, backend=backend, structured_outputs_config=structured_outputs_config(backend))
        assert identity(legacy)["structured_outputs_config"] == {"backend": backend}
        diffs = differences(legacy, now)
        if resumes:
            assert diffs == [], backend
        else:
            assert diffs == ["structured_outputs_config.disable_any_whitespace: null -> true"], backend
    # unconstrained runs: the engine's structured-outputs config decides nothing
    assert identity(_run_json(constrained=False, structured_outputs_config={"backend": "xgrammar"}))[
        "structured_outputs_config"] is None


def test_batch_records_the_engine_config_its_offline_engine_uses(tmp_path):
    """run.json's structured_outputs_config is the one VllmOffline builds its engine with (one owner:
    runtime.cpu_env.structured_outputs_config); through a server it is None (the server's start decides it)."""
    from patent_risk.evaluate.batch import BatchConfig, provenance
    from patent_risk.runtime.cpu_env import structured_outputs_config

    data = tmp_path / "d.jsonl"
    data.write_text("", encoding="utf-8")
    desc = {"name": "vllm", "version": "0.32.0", "mode": "offline"}
    for backend in ("outlines", "xgrammar", "guidance"):
        cfg = BatchConfig(data=str(data), out=str(tmp_path / "o"), constrained=True, backend=backend)
        doc = provenance(cfg, str(tmp_path / "no-model"), desc, 0)
        assert doc["structured_outputs_config"] == structured_outputs_config(backend)
        assert identity(doc)["structured_outputs_config"] == structured_outputs_config(backend)
    server = BatchConfig(data=str(data), out=str(tmp_path / "o"), constrained=True, backend="xgrammar",
                         server="http://127.0.0.1:9")
    assert provenance(server, str(tmp_path / "no-model"), {**desc, "mode": "server"}, 0)["structured_outputs_config"] is None


def test_server_and_offline_requests_carry_the_same_structured_output_options():
    """Item 5: `evaluate batch --server` (and serve bench) send, in the request body, exactly the options the
    offline engine gives StructuredOutputsParams: both come from GenRequest.structured_outputs()."""
    from vllm.sampling_params import StructuredOutputsParams

    req = GenRequest("r1", [{"role": "user", "content": "x"}], 32, {"type": "object"})
    body = req.chat_body_extra()
    assert body == {"structured_outputs": {"json": {"type": "object"}, "disable_any_whitespace": True}}
    # what vLLM's server builds from the body's field equals the offline engine's parameters
    server_side = StructuredOutputsParams(**json.loads(json.dumps(body["structured_outputs"])))
    assert server_side == StructuredOutputsParams(**req.structured_outputs())
    assert server_side.disable_any_whitespace is True
    assert GenRequest("r2", [], 8, None).chat_body_extra() is None


def test_record_valid_counts_only_the_records_own_ids_in_order(tmp_path):
    """Item 4: generic-valid outputs with wrong, reordered, repeated or missing ids are json_valid but not
    record_valid."""
    ids = [("E1", "대응"), ("E2", "미대응")]
    rows = [
        row("1", "높음", ids, output_text("높음", ids)),  # the record's ids: record-valid
        row("2", "높음", ids, output_text("높음", [("E2", "미대응"), ("E1", "대응")])),  # reordered
        row("3", "높음", ids, output_text("높음", [("E1", "대응"), ("X9", "미대응")])),  # an id not the record's
        row("4", "높음", ids, output_text("높음", [("E1", "대응"), ("E1", "미대응")])),  # repeated
        row("5", "높음", ids, output_text("높음", [("E1", "대응")])),  # missing one
        row("6", "높음", ids, "not json"),
    ]
    run = write_run(tmp_path / "r", rows, info(False))
    m = build_report([run], bootstrap=0).metrics["runs"]["r"]
    assert m["json_valid"]["count"] == 5
    assert m["record_valid"] == {"count": 1, "total": 6, "rate": round(1 / 6, 4)}
    report = build_report([run], bootstrap=0)
    assert "record_valid" in report.markdown and "record_valid" in report.html


def test_comparisons_say_what_differs(tmp_path):
    """Item 11: paired by sample id and gold as before, and each entry (md and html too) lists what differs."""
    ids = [("E1", "대응")]
    rows = [row(str(i), "높음", ids, output_text("높음", ids)) for i in range(6)]
    a = write_run(tmp_path / "a", rows, info(False))
    other = info(True, "v2")
    other["prompt"] = {"version": "p2", "hash": "x" * 16}
    other["max_tokens"] = {"rule": "per record: schema budget", "min": 40, "max": 40, "total": 240}
    b = write_run(tmp_path / "b", [dict(r, raw_output=output_text("높음", ids)) for r in rows], other)
    c = write_run(tmp_path / "c", rows)  # no run.json
    report = build_report([a, b, c], bootstrap=0)
    ab, ac = report.metrics["comparisons"]
    assert ab["samples"]["compared"] == 6  # still paired
    fields = [line.split(":", 1)[0] for line in ab["differs"]]
    assert fields == ["schema.name", "schema.hash", "constrained", "backend", "structured_outputs", "prompt"]
    assert ac["differs"] is None and ac["differs_unknown"] == ["c"]
    for text in (report.markdown, report.html, report.summary_markdown):
        assert "schema.name" in text and "c has no run.json to tell" in text
    assert comparison_differences(info(False), None) is None


def test_max_tokens_budget_difference_is_listed_in_comparisons():
    a, b = _run_json(max_tokens={"rule": "r", "min": 30, "max": 60, "total": 900}), _run_json()
    assert comparison_differences(a, b) == []  # one run did not record it: nothing to compare
    b["max_tokens"] = {"rule": "r", "min": 30, "max": 80, "total": 950}
    assert comparison_differences(a, b)[-1].startswith("max_tokens:")
