"""Label probabilities at each decision of an answer (runtime.label_probs, issue 32): pure, on hand-made tokens."""
from __future__ import annotations

import json
import math

import pytest

from patent_risk.runtime.label_probs import decision_points, first_token_ids, label_probabilities

FIRST = {"risk_level": {"높음": 1, "애매": 2, "낮음": 3}, "match": {"대응": 4, "판단불가": 5, "미대응": 6}}


def test_decision_points_by_offset_in_every_schema_and_never_inside_a_reason():
    v1 = '{"risk_level": "높음", "matches": [{"element_id": "E1", "match": "대응"}, {"element_id": "E2", "match": "미대응"}]}'
    pts = decision_points(v1)
    assert [(p.field, p.element_id, p.label) for p in pts] == [("risk_level", None, "높음"), ("match", "E1", "대응"),
                                                                ("match", "E2", "미대응")]
    assert all(v1[p.offset:p.offset + len(p.label)] == p.label for p in pts)
    v2 = ('{"risk_level":"애매","matches":[{"element_id":"E1","reason":"\\"match\\": \\"대응\\" 높음 없음","match":"판단불가"}]}')
    pts = decision_points(v2)
    assert [(p.field, p.element_id, p.label) for p in pts] == [("risk_level", None, "애매"), ("match", "E1", "판단불가")]
    assert all(v2[p.offset:p.offset + len(p.label)] == p.label for p in pts)
    v3 = '{"matches":[{"element_id":"E1","match":"대응"}],"risk_level":"낮음"}'
    assert [p.field for p in decision_points(v3)] == ["match", "risk_level"]
    assert decision_points('{"risk_level": "높') is None  # truncated: not valid JSON


def _tokens(answer: str, labels_first: dict[str, int]):
    """One token per character, except each label's first character, which gets its label's first-token id."""
    ids, spans = [], []
    for p in decision_points(answer):
        spans.append((p.offset, FIRST[p.field][p.label]))
    first_at = dict(spans)
    for i, ch in enumerate(answer):
        ids.append(first_at.get(i, 1000 + ord(ch) % 1000))
    return ids


def test_probabilities_sum_to_one_and_the_mass_is_what_the_labels_had():
    answer = '{"risk_level":"애매","matches":[{"element_id":"E1","match":"대응"}]}'
    ids = _tokens(answer, FIRST)
    lps = [{} for _ in ids]
    pts = decision_points(answer)
    lps[pts[0].offset] = {1: math.log(0.2), 2: math.log(0.5), 3: math.log(0.1)}
    lps[pts[1].offset] = {4: math.log(0.9), 5: math.log(0.05)}  # 미대응 not returned: probability 0
    got = label_probabilities(answer, ids, lps, FIRST, lambda k: k)
    risk = got["risk_level"]
    assert risk["label"] == "애매" and risk["mass"] == pytest.approx(0.8)
    assert risk["probs"] == pytest.approx({"높음": 0.25, "애매": 0.625, "낮음": 0.125})
    m = got["matches"][0]
    assert m["element_id"] == "E1" and sum(m["probs"].values()) == pytest.approx(1.0) and m["probs"]["미대응"] == 0.0
    assert max(m["probs"], key=m["probs"].get) == m["label"]
    json.dumps(got)  # a row field


def test_an_answer_that_is_not_json_and_a_label_split_across_tokens_are_said_not_guessed():
    assert "missing" in label_probabilities('{"risk_level": "높', [1], [{}], FIRST, lambda k: k)
    answer = '{"risk_level":"높음","matches":[]}'
    off = decision_points(answer)[0].offset
    ids = [7] * len(answer)  # the label's first character is no label's first token
    got = label_probabilities(answer, ids, [{} for _ in ids], FIRST, lambda k: k)
    assert "not a risk_level label's first token" in got["risk_level"]["unread"]
    # one token spanning the quote and the label's first character: no token starts at the label
    prefix = lambda k: 0 if k == 0 else min(len(answer), off + 1 + (k - 1))  # noqa: E731
    got = label_probabilities(answer, ids[: len(answer) - off], [{}] * (len(answer) - off), FIRST, prefix)
    assert got["risk_level"]["unread"] == "the label does not begin a token"


def test_first_tokens_must_tell_a_fields_labels_apart():
    assert first_token_ids(lambda s: [ord(s[0]), 0]) == {f: {lab: ord(lab[0]) for lab in labs}
                                                         for f, labs in (("risk_level", ("높음", "애매", "낮음")),
                                                                         ("match", ("대응", "판단불가", "미대응")))}
    with pytest.raises(ValueError, match="same token"):
        first_token_ids(lambda s: [0])


def test_gemma_3s_first_tokens_are_one_syllable_each(gemma_tokenizer):
    ids = first_token_ids(lambda s: gemma_tokenizer(s, add_special_tokens=False)["input_ids"])
    assert ids == {"risk_level": {"높음": 240365, "애매": 239952, "낮음": 242071},
                   "match": {"대응": 237584, "판단불가": 239579, "미대응": 238220}}


def _check_decisions(probs: dict, constrained: bool) -> int:
    """Every read decision's probabilities sum to 1 over its field's labels with a mass in (0, 1]; under the
    constraint the label written is the most probable one. Returns how many decisions were read."""
    decisions = [probs["risk_level"], *probs["matches"]] if probs.get("risk_level") else probs.get("matches", [])
    read = 0
    for d in decisions:
        if "probs" not in d:
            continue
        read += 1
        assert sum(d["probs"].values()) == pytest.approx(1.0, abs=1e-5), d
        assert 0 < d["mass"] <= 1.0 + 1e-6, d
        if constrained:
            assert d["probs"][d["label"]] == max(d["probs"].values()), d  # greedy: the written label is the argmax
    return read


@pytest.mark.engine
@pytest.mark.parametrize("constrained", [True, False], ids=["constrained", "unconstrained"])
def test_label_probabilities_change_no_output_and_read_every_decision(engine, eval_records, constrained):
    from patent_risk.runtime.requests import build_requests

    records = eval_records[:2]
    plain = engine.generate(build_requests(records, "v1", constrained, engine.count_tokens))
    reqs = build_requests(records, "v1", constrained, engine.count_tokens, label_probs=True)
    with_probs = engine.generate(reqs)
    assert [r.raw_output for r in with_probs] == [r.raw_output for r in plain]  # byte-identical outputs
    assert all(r.label_probs is None for r in plain)
    read = 0
    for rec, res in zip(records, with_probs):
        lp = res.label_probs
        if "missing" in lp:
            assert not constrained, lp
            continue
        read += _check_decisions(lp, constrained)
        if constrained:  # one decision per element and risk_level, each read
            assert [m["element_id"] for m in lp["matches"]] == rec.element_ids
            assert read and all("probs" in m for m in lp["matches"]) and "probs" in lp["risk_level"]
    assert read > 0 or not constrained


def test_a_tokenizer_that_starts_two_labels_alike_gives_runs_without_label_probabilities(smollm2_model, gemma_model):
    """SmolLM2's byte-level BPE starts 높음 and 낮음 with the same token ('ë'): its runs record label_probs false
    (with a note) instead of failing; Gemma 3's tokenizer can."""
    from patent_risk.evaluate.batch import BatchConfig, label_probs_unreadable, reads_label_probs

    reason = label_probs_unreadable(str(smollm2_model))
    assert reason is not None and "same token" in reason and "risk_level" in reason
    assert label_probs_unreadable(str(gemma_model)) is None
    cfg = BatchConfig(data="d.jsonl", out="o", constrained=True)
    assert not reads_label_probs(cfg, str(smollm2_model)) and reads_label_probs(cfg, str(gemma_model))
    assert reads_label_probs(BatchConfig(data="d", out="o", constrained=True, server="http://x"), str(gemma_model))
    assert not reads_label_probs(BatchConfig(data="d", out="o", constrained=True, label_probs=False), str(gemma_model))
    assert "could not be read" in label_probs_unreadable(str(gemma_model) + "-absent")  # said, not raised


def test_openai_steps_reads_token_ids_and_says_when_the_server_ignored_the_extension():
    from patent_risk.runtime.label_probs import openai_steps

    wanted = {1, 2}
    step = {"token": "token_id:7", "logprob": -0.1,
            "top_logprobs": [{"token": "token_id:7", "logprob": -0.1}, {"token": "token_id:1", "logprob": -2.0},
                             {"token": "token_id:2", "logprob": -9999.0}]}
    assert openai_steps([step, {**step, "token": "token_id:1"}], wanted) == ([7, 1], [{1: -2.0, 2: -9999.0}] * 2)
    assert openai_steps([], wanted) == ([], [])  # an empty answer: nothing to read, not a refusal
    assert openai_steps(None, wanted) is None  # no logprobs at all
    assert openai_steps([{**step, "token": "높"}], wanted) is None  # tokens as text: return_tokens_as_token_ids ignored
    assert openai_steps([{**step, "top_logprobs": []}], wanted) is None  # logprob_token_ids ignored
    assert openai_steps([{**step, "top_logprobs": step["top_logprobs"][:2]}], wanted) is None
