"""Pure tests of the contracts: committed schema files, specialization, budgets, prompts."""
import json

import jsonschema
import pytest

from patent_risk.schemas.errors import UserError
from patent_risk.schemas.labels import MATCH_LABELS, RISK_LEVELS, SCHEMA_NAMES
from patent_risk.schemas.output import (SCHEMA_SUMMARIES, current_schema_hash, generate_schema, legacy_schema_hash, load_schema,
                            longest_instance, max_tokens_budget, render_compact, schema_errors, schema_hash,
                            schema_names, schema_path, specialize)
from patent_risk.schemas.prompt import label_to_output, render_answer, render_messages
from patent_risk.schemas.records import Record


def _record(n=3, reasons=True, **kw):
    els = [{"id": f"E{i}", "text": f"성분 {i} 1 내지 {i + 5}중량%"} for i in range(1, n + 1)]
    label = {"risk_level": "애매", "matches": [{"element_id": e["id"], "match": "판단불가", **({"reason": f"성분 {i} 미기재"} if reasons else {})}
                                             for i, e in enumerate(els, 1)]}
    return Record.model_validate({"id": "r1", "patent_id": "P1", "claim": "청구항", "elements": els,
                                  "query": "제품: 성분 1 3중량%", "label": label, **kw})


@pytest.mark.parametrize("name", schema_names())
def test_committed_schema_files_match_models(name):
    """Fails when a committed schema drifts from its pydantic model: regenerate with
    `python -c 'from schemas.output import write_schema_files; write_schema_files()'`."""
    committed = json.loads(schema_path(name).read_text(encoding="utf-8"))
    assert committed == generate_schema(name)
    jsonschema.Draft202012Validator.check_schema(committed)


def test_v2_puts_reason_before_match_with_max_length():
    item = load_schema("v2")["properties"]["matches"]["items"]
    assert list(item["properties"]) == ["element_id", "reason", "match"]
    assert item["properties"]["reason"]["maxLength"] > 0


@pytest.mark.parametrize("name", schema_names())
def test_schemas_keep_contract_names_and_values(name):
    schema = load_schema(name)
    assert schema["properties"]["risk_level"]["enum"] == list(RISK_LEVELS)
    assert schema["properties"]["matches"]["items"]["properties"]["match"]["enum"] == list(MATCH_LABELS)
    assert schema["additionalProperties"] is False


def test_schema_hash_is_stable_and_distinguishes():
    assert schema_hash(load_schema("v1")) == schema_hash(json.loads(json.dumps(load_schema("v1"))))
    assert len({schema_hash(load_schema(n)) for n in schema_names()}) == len(schema_names())


def test_schema_hash_keeps_property_order():
    """v1 with its properties in the other order asks the decoder for matches first: equal as a dict, and
    for the sorted-key hash (the legacy one), but not for the hash."""
    v1 = load_schema("v1")
    reordered = dict(v1, properties={k: v1["properties"][k] for k in ("matches", "risk_level")})
    assert reordered == v1 and list(reordered["properties"]) != list(v1["properties"])
    assert legacy_schema_hash(reordered) == legacy_schema_hash(v1)
    assert schema_hash(reordered) != schema_hash(v1)


def test_a_legacy_hash_reads_as_the_current_hash_of_the_same_schema():
    """Runs and adapters recorded before the hash kept property order still resume and compare as the
    same schema; a hash of another schema, or of another name, stays what it is."""
    for name in schema_names():
        schema = load_schema(name)
        assert current_schema_hash(name, legacy_schema_hash(schema)) == schema_hash(schema)
        assert current_schema_hash(name, schema_hash(schema)) == schema_hash(schema)
    assert current_schema_hash("v1", legacy_schema_hash(load_schema("v2"))) == legacy_schema_hash(load_schema("v2"))
    assert current_schema_hash("v9", "abc") == "abc" and current_schema_hash("v1", None) is None


def test_schema_names_agree():
    assert tuple(schema_names()) == SCHEMA_NAMES and set(SCHEMA_SUMMARIES) == set(SCHEMA_NAMES)


@pytest.mark.parametrize("name", schema_names())
def test_specialization_fixes_ids_in_order(name):
    spec = specialize(load_schema(name), ["E1", "E2", "E3"])
    validator = jsonschema.Draft202012Validator(spec)
    good = longest_instance(name, ["E1", "E2", "E3"])
    assert validator.is_valid(good)
    swapped = json.loads(json.dumps(good))
    swapped["matches"][0]["element_id"], swapped["matches"][1]["element_id"] = "E2", "E1"
    assert not validator.is_valid(swapped)
    short = dict(good, matches=good["matches"][:2])
    assert not validator.is_valid(short)
    extra = dict(good, matches=good["matches"] + [good["matches"][0]])
    assert not validator.is_valid(extra)
    # the generic schema is untouched and accepts any ids
    assert not schema_errors(dict(good, matches=[dict(m, element_id="X") for m in good["matches"]]), name)


def test_generic_validation_rejects_bad_labels():
    assert schema_errors({"risk_level": "중간", "matches": []}, "v1")
    assert schema_errors({"risk_level": "높음", "matches": [{"element_id": "E1", "match": "yes"}]}, "v1")
    assert schema_errors({"risk_level": "높음", "matches": [], "extra": 1}, "v1")
    assert not schema_errors({"risk_level": "높음", "matches": []}, "v1")


def test_budget_covers_longest_instance_compact_and_indented():
    count = len  # one token per character is an upper bound here: exercise the arithmetic
    ids = ["E1", "E2", "E3", "E4"]
    budget = max_tokens_budget("v1", ids, count)
    inst = longest_instance("v1", ids)
    assert budget >= len(json.dumps(inst, ensure_ascii=False, indent=2))
    assert max_tokens_budget("v1", ids + ["E5"], count) > budget
    assert max_tokens_budget("v2", ids, count) > budget


def test_budget_with_real_tokenizer_fits_longest_answer(tokenizer, eval_records):
    def count(t):
        return len(tokenizer(t, add_special_tokens=False)["input_ids"])

    for name in schema_names():  # the demo records carry reasons, so v2's trained answer is measured too
        for rec in eval_records[:20]:
            budget = max_tokens_budget(name, rec.element_ids, count)
            assert count(render_answer(rec.label, name)) + 1 <= budget


def test_prompt_states_ids_and_allowed_values():
    rec = _record(4)
    text = "\n".join(m["content"] for m in render_messages(rec))
    for eid in rec.element_ids:
        assert f"{eid}:" in text
    for label in RISK_LEVELS + MATCH_LABELS:
        assert label in text
    assert rec.query in text
    assert render_messages(rec, "v1") != render_messages(rec, "v2")


def test_answer_is_compact_valid_json():
    rec = _record(2)
    answer = render_answer(rec.label)
    assert answer == render_compact(label_to_output(rec.label))
    assert " " not in answer and not schema_errors(json.loads(answer), "v1")
    v2 = label_to_output(rec.label, "v2")
    assert not schema_errors(v2, "v2")
    assert [m["reason"] for m in v2["matches"]] == ["성분 1 미기재", "성분 2 미기재"]
    assert render_answer(rec.label, "v2") == render_compact(v2)


def test_v3_is_element_first_everywhere():
    """v3 asks for the element judgements before the risk they imply: its schema, the trained answer, the
    prompt's format line and the longest instance all put matches first; v1 and v2 put risk_level first."""
    assert list(load_schema("v3")["properties"]) == ["matches", "risk_level"]
    assert list(load_schema("v1")["properties"]) == list(load_schema("v2")["properties"]) == ["risk_level", "matches"]
    rec = _record(2)
    assert render_answer(rec.label, "v3").startswith('{"matches":[{"element_id":"E1","match":"판단불가"}')
    assert render_answer(rec.label, "v3").endswith('],"risk_level":"애매"}')
    assert list(longest_instance("v3", ["E1"])) == ["matches", "risk_level"]
    assert 'Format: {"matches":[{"element_id":"E1","match":"…"},…],"risk_level":"…"}' in render_messages(rec, "v3")[1]["content"]
    assert 'Format: {"risk_level":"…","matches":[{"element_id":"E1","match":"…"},…]}' in render_messages(rec, "v1")[1]["content"]
    assert not schema_errors(label_to_output(rec.label, "v3"), "v3")


def test_a_schema_with_reasons_refuses_a_label_without_them():
    """v2 is never trained on empty or made-up reasons: a label without them is a UserError naming the
    elements; v1 and v3 do not need them."""
    rec = _record(2, reasons=False)
    with pytest.raises(UserError, match=r"E1, E2.*reason"):
        render_answer(rec.label, "v2")
    assert render_answer(rec.label, "v1") and render_answer(rec.label, "v3")
