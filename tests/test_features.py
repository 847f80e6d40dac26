"""Prompt masking, token by token, with the embedded models' real tokenizers: Gemma 3's (the default) and,
for the traps a ChatML tokenizer shows (pad == eos, a template without BOS), SmolLM2's."""
import pytest
import torch

from patent_risk.schemas.prompt import render_answer
from patent_risk.train.features import IGNORE_INDEX, build_features, make_collator, prompt_ids, stop_token_ids

END_OF_TURN = 106  # Gemma 3's <end_of_turn>


@pytest.fixture(params=["gemma", "smollm2"])
def any_tokenizer(request):
    """Gemma 3's tokenizer (<end_of_turn> 106 ends a turn) and SmolLM2's (<|im_end|>, its eos)."""
    return request.getfixturevalue("gemma_tokenizer" if request.param == "gemma" else "smollm2_tokenizer")


def test_prompt_is_masked_and_answer_with_end_of_turn_is_trained(any_tokenizer, eval_records):
    tokenizer = any_tokenizer
    rec = eval_records[0]
    f = build_features(tokenizer, rec)
    p_ids = prompt_ids(tokenizer, rec)
    assert f.input_ids[: len(p_ids)] == p_ids
    assert f.labels[: len(p_ids)] == [IGNORE_INDEX] * len(p_ids)
    trained = f.labels[len(p_ids):]
    assert IGNORE_INDEX not in trained and trained == f.input_ids[len(p_ids):]
    # token by token: the answer's own ids, then <end_of_turn> (what generation stops on) and nothing after it
    answer_ids = tokenizer(render_answer(rec.label), add_special_tokens=False)["input_ids"]
    end_of_turn = END_OF_TURN if tokenizer.vocab_size == 262144 else tokenizer.eos_token_id
    assert trained == answer_ids + [end_of_turn]
    assert end_of_turn in stop_token_ids(tokenizer)
    if tokenizer.vocab_size == 262144:
        assert stop_token_ids(tokenizer) == {1, END_OF_TURN}


def test_prompt_ids_equal_what_inference_renders(any_tokenizer, eval_records):
    from patent_risk.schemas.prompt import render_messages

    tokenizer = any_tokenizer
    rec = eval_records[3]
    ids = tokenizer.apply_chat_template(render_messages(rec), tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert prompt_ids(tokenizer, rec) == list(ids)


def test_gemma_bos_exactly_once(gemma_tokenizer, eval_records):
    """Gemma's tokenizer adds BOS by default and its template writes one: the prompt has exactly one."""
    tokenizer = gemma_tokenizer
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    assert tokenizer(text)["input_ids"][:2] == [2, 2]  # the trap: tokenizing the rendered text again
    f = build_features(tokenizer, eval_records[0])
    assert f.input_ids[0] == 2 and f.input_ids.count(2) == 1


@pytest.fixture()
def bos_tokenizer(smollm2_model):
    """A ChatML tokenizer made to add BOS by default, its template made to write BOS, as Gemma's do."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_model, add_bos_token=True, bos_token="<|endoftext|>")
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    return tok


def test_no_double_bos_with_a_bos_adding_tokenizer(bos_tokenizer, eval_records):
    rec = eval_records[0]
    bos = bos_tokenizer.bos_token_id
    text = bos_tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    assert bos_tokenizer(text)["input_ids"][:2] == [bos, bos]  # the trap: tokenizing the rendered text again
    f = build_features(bos_tokenizer, rec)
    assert f.input_ids[0] == bos and f.input_ids.count(bos) == 1


def test_bos_added_once_when_the_template_does_not_write_it(smollm2_model, eval_records):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_model, add_bos_token=True, bos_token="<|endoftext|>")
    ids = prompt_ids(tok, eval_records[0])
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_collator_keeps_labels_and_pads_with_ignore_index(any_tokenizer, eval_records):
    tokenizer = any_tokenizer
    feats = [build_features(tokenizer, r).as_dict() for r in eval_records[:3]]
    batch = make_collator(tokenizer)(feats)
    for i, f in enumerate(feats):
        n = len(f["labels"])
        assert batch["labels"][i, :n].tolist() == f["labels"]
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][i].sum().item() == n


def test_language_modeling_collator_would_destroy_the_mask(smollm2_tokenizer, eval_records):
    """The seed's bug, kept as a regression test: DataCollatorForLanguageModeling(mlm=False) rebuilds
    labels from input_ids (the prompt is trained again) and masks every pad token, which for a ChatML
    model whose pad is its eos is the end-of-turn token, so the model would never learn to stop."""
    from transformers import DataCollatorForLanguageModeling

    tokenizer = smollm2_tokenizer
    feats = [build_features(tokenizer, r).as_dict() for r in eval_records[:2]]
    ours = make_collator(tokenizer)(feats)
    # As the seed did: features padded to one length beforehand, precomputed labels included.
    width = max(len(f["input_ids"]) for f in feats)
    padded = [{"input_ids": f["input_ids"] + [tokenizer.pad_token_id] * (width - len(f["input_ids"])),
               "attention_mask": f["attention_mask"] + [0] * (width - len(f["input_ids"])),
               "labels": f["labels"] + [IGNORE_INDEX] * (width - len(f["labels"]))} for f in feats]
    theirs = DataCollatorForLanguageModeling(tokenizer, mlm=False)(padded)
    n_prompt = feats[0]["labels"].count(IGNORE_INDEX)
    assert (ours["labels"][0, :n_prompt] == IGNORE_INDEX).all()
    eot = tokenizer.eos_token_id
    prompt = torch.tensor(feats[0]["input_ids"][:n_prompt])
    unmasked = theirs["labels"][0, :n_prompt] != IGNORE_INDEX
    assert torch.equal(unmasked, prompt != eot)  # the whole prompt trained again, but for its end-of-turn tokens
    assert tokenizer.pad_token_id == eot
    ours_eot = (ours["labels"][0] == eot).sum().item()
    theirs_eot = (theirs["labels"][0] == eot).sum().item()
    assert ours_eot >= 1 and theirs_eot == 0  # end-of-turn never trained
    assert not torch.equal(ours["labels"], theirs["labels"])


def test_language_modeling_collator_unmasks_gemmas_prompt(gemma_tokenizer, eval_records):
    """The same bug on Gemma 3 (pad <pad> 0, not its end of turn): the whole prompt is trained again."""
    from transformers import DataCollatorForLanguageModeling

    tokenizer = gemma_tokenizer

    feats = [build_features(tokenizer, r).as_dict() for r in eval_records[:1]]
    theirs = DataCollatorForLanguageModeling(tokenizer, mlm=False)(feats)
    n_prompt = feats[0]["labels"].count(IGNORE_INDEX)
    assert (theirs["labels"][0, :n_prompt] != IGNORE_INDEX).all()
    assert (make_collator(tokenizer)(feats)["labels"][0, :n_prompt] == IGNORE_INDEX).all()


@pytest.mark.parametrize("name", ["v2", "v3"])
def test_each_schema_trains_its_own_answer(gemma_tokenizer, eval_records, name):
    """Issue 18: v2 trains on each element's reason from the data (it used to get none and trained answers
    that were not v2-valid), v3 on matches before risk_level; the prompt's format line follows the schema."""
    import json

    from patent_risk.schemas.output import schema_errors

    tokenizer = gemma_tokenizer
    rec = eval_records[0]
    f = build_features(tokenizer, rec, name)
    p_ids = prompt_ids(tokenizer, rec, name)
    answer = tokenizer.decode(f.input_ids[len(p_ids):-1])
    assert f.labels[len(p_ids):] == f.input_ids[len(p_ids):] and f.input_ids[-1] == END_OF_TURN
    obj = json.loads(answer)
    assert schema_errors(obj, name) == [] and answer == render_answer(rec.label, name)
    if name == "v2":
        assert [m["reason"] for m in obj["matches"]] == [m.reason for m in rec.label.matches]
        assert all(m.reason for m in rec.label.matches)
    else:
        assert list(obj) == ["matches", "risk_level"]


def test_v2_refuses_a_record_without_reasons(gemma_tokenizer, eval_records):
    from patent_risk.schemas.errors import UserError
    from patent_risk.schemas.records import Record

    data = eval_records[0].to_json()
    for m in data["label"]["matches"]:
        m.pop("reason")
    rec = Record.model_validate(data)
    with pytest.raises(UserError, match=rf"record '{rec.id}'.*E1, E2"):
        build_features(gemma_tokenizer, rec, "v2")
    assert build_features(gemma_tokenizer, rec, "v1").labels
