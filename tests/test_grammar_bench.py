"""The two grammar microbenchmarks of issue 34 run, and measure what they say: every backend's grammar (vLLM's own
backend classes) accepts the demo records' gold answers token by token, in each output schema; the bitmask
benchmark prints one row per batch size and kind of mask."""
from __future__ import annotations

import pytest
from click.testing import CliRunner


@pytest.mark.filterwarnings("ignore:max_rollback_tokens is deprecated:DeprecationWarning")  # vLLM 0.32 passes it to xgrammar
@pytest.mark.parametrize("schema_name,backends", [("v1", ("outlines", "xgrammar", "guidance")),
                                                  ("v2", ("xgrammar", "guidance"))])  # outlines' v2 index: minutes
def test_every_backend_follows_the_gold_answers(gemma_tokenizer, eval_records, schema_name, backends):
    """On Gemma's tokenizer (the users' family): SmolLM2's byte-level tokens for Korean text are refused by
    outlines inside v2's length-bounded reason, a limit of that tokenizer, not of the schema."""
    from patent_risk.bench.grammar_step import make_backend, replay
    from patent_risk.schemas.output import load_schema, specialize
    from patent_risk.schemas.prompt import render_answer

    schema = load_schema(schema_name)
    rec = eval_records[0]
    tokens = gemma_tokenizer(render_answer(rec.label, schema_name), add_special_tokens=False)["input_ids"]
    for name in backends:
        out = replay(make_backend(name, gemma_tokenizer, 262_144), specialize(schema, rec.element_ids), tokens)
        assert out["refused_at"] is None, (name, out["refused_at"])
        assert len(out["fill_us"]) == len(tokens) and min(out["fill_us"]) > 0 and min(out["accept_us"]) > 0


def test_the_bitmask_benchmark_prints_a_row_per_size_and_mask():
    from patent_risk.bench.grammar_mask import KINDS, main

    result = CliRunner().invoke(main, ["--rows", "2,3", "--vocab", "4096", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| 2 |") or line.startswith("| 3 |")]
    assert len(rows) == 2 * len(KINDS)
