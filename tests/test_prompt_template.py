"""--prompt-template (issue 28): a user's own prompt, a Jinja template of the user turn over the record's fields,
trained with, recorded in the adapter's manifest and used by evaluation by default. The real engine run that
decodes with it is tests/test_bases.py's (one engine for both)."""
from __future__ import annotations

from pathlib import Path

import pytest

from patent_risk.schemas.errors import UserError

TEMPLATE = """{% set system = "You are a patent analyst. Reply with JSON only." %}
Patent {{ patent_id }}. Claim elements:
{% for e in elements %}
- {{ e.id }}: {{ e.text }}
{% endfor %}
Product: {{ query }}
Answer as {{ answer_format }}
"""


def write_template(folder: Path, text: str = TEMPLATE) -> Path:
    path = folder / "my_prompt.jinja"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_template_renders_the_records_fields_with_its_own_system_turn(eval_records, tmp_path):
    from patent_risk.schemas.prompt import BUILTIN, load_prompt_template, render_messages

    rec = eval_records[0]
    prompt = load_prompt_template(write_template(tmp_path))
    system, user = render_messages(rec, "v1", prompt)
    assert system == {"role": "system", "content": "You are a patent analyst. Reply with JSON only."}
    assert user["role"] == "user" and user["content"].startswith(f"Patent {rec.patent_id}. Claim elements:\n- E1: ")
    assert all(f"- {e.id}: {e.text}" in user["content"] for e in rec.elements) and rec.query in user["content"]
    assert '"risk_level"' in user["content"]  # answer_format, in the schema's shape
    # without `set system`, no system turn
    bare = load_prompt_template(write_template(tmp_path, "Product: {{ query }}"))
    assert render_messages(rec, "v1", bare) == [{"role": "user", "content": f"Product: {rec.query}"}]
    # the built-in prompt is unchanged, and hashed as before
    assert render_messages(rec, "v1", BUILTIN) == render_messages(rec, "v1")
    assert BUILTIN.describe("v1") == {"version": "p1", "hash": BUILTIN.fingerprint("v1")}
    assert prompt.fingerprint("v1") != BUILTIN.fingerprint("v1") != bare.fingerprint("v1")
    (tmp_path / "elsewhere").mkdir()
    assert prompt.fingerprint("v1") == load_prompt_template(write_template(tmp_path / "elsewhere")).fingerprint("v1")
    doc = prompt.describe("v1")
    assert doc["template"] == TEMPLATE and doc["source"].endswith("my_prompt.jinja")


def test_a_bad_template_is_refused_naming_the_file_line_and_record(eval_records, tmp_path):
    from patent_risk.schemas.prompt import check_renders, load_prompt_template

    with pytest.raises(UserError, match=r"my_prompt.jinja:2: not a Jinja template"):
        load_prompt_template(write_template(tmp_path, "ok\n{% for e in elements %}\n"))
    typo = load_prompt_template(write_template(tmp_path, "Product: {{ qurey }}"))
    with pytest.raises(UserError, match=rf"my_prompt.jinja: rendering record '{eval_records[0].id}': 'qurey' is undefined"):
        check_renders(typo, eval_records[:3], "v1")
    with pytest.raises(UserError, match="cannot read"):
        load_prompt_template(tmp_path / "missing.jinja")


def test_the_trainer_masks_the_templates_prompt(smollm2_tokenizer, eval_records, tmp_path):
    from patent_risk.schemas.prompt import load_prompt_template
    from patent_risk.train.features import IGNORE_INDEX, build_features

    rec = eval_records[0]
    prompt = load_prompt_template(write_template(tmp_path))
    feats = build_features(smollm2_tokenizer, rec, "v1", prompt)
    n_prompt = sum(1 for x in feats.labels if x == IGNORE_INDEX)
    prompt_text = smollm2_tokenizer.decode(feats.input_ids[:n_prompt])
    assert "You are a patent analyst" in prompt_text and f"Patent {rec.patent_id}." in prompt_text
    assert smollm2_tokenizer.decode(feats.input_ids[n_prompt:]).startswith('{"risk_level"')


def test_a_runs_identity_is_the_prompts_version_and_hash_not_its_source():
    from patent_risk.evaluate.provenance import differences, identity

    a = {"prompt": {"version": "template", "hash": "abc", "template": "x", "source": "/a/p.jinja"}}
    b = {"prompt": {"version": "template", "hash": "abc", "template": "x", "source": "/b/p.jinja"}}
    assert identity(a)["prompt"] == identity(b)["prompt"] == {"version": "template", "hash": "abc"}
    assert differences(a, {"prompt": {"version": "p1", "hash": "def"}})


def test_evaluation_takes_the_adapters_prompt_unless_given_one_and_says_when_they_differ(trained_adapter, tmp_path):
    """No engine: the prompt is settled from the adapter's manifest (the shared tiny adapter: built-in p1) or from
    --prompt-template, which is noted as differing from the one the adapter was trained with."""
    from patent_risk.evaluate.batch import BatchConfig, settle_prompt
    from patent_risk.runtime.engines import AdapterSpec

    spec = AdapterSpec("tiny", str(trained_adapter))
    logged: list[str] = []
    cfg = BatchConfig(data="d", out="o", constrained=True, adapter=spec)
    settle_prompt(cfg, logged.append)
    assert cfg.prompt.builtin and not logged
    cfg = BatchConfig(data="d", out="o", constrained=True, adapter=spec, prompt_template=str(write_template(tmp_path)))
    settle_prompt(cfg, logged.append)
    assert not cfg.prompt.builtin and cfg.prompt.template == TEMPLATE
    assert any(line.startswith("note:") and "trained with another prompt" in line for line in logged)
