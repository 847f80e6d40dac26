"""How sure the model was at each decision of its answer (issue 32): the probability of each label of a field
where the answer writes that field's label, read from the log-probabilities the engine returned for the labels'
first tokens. Pure: the engine supplies the token ids, their log-probabilities and a detokenizer.

Every label is several tokens on Gemma 3's tokenizer and within a field the labels' first tokens differ (높음 /
애매 / 낮음: 높, 애, 낮; 대응 / 판단불가 / 미대응: 대, 판, 미); under a JSON-schema constraint the tokens after the first
are forced. So a field's label probability is the first token's probability renormalized over the field's
first tokens, and their sum before renormalizing (the label mass) says how much probability went elsewhere (in
an unconstrained answer: to text that is not a label). With greedy decoding a later decision is conditional on
the earlier choices of the same answer.

Decision points are found by character offsets in the decoded answer (a small JSON scanner), never by scanning
token ids: a v2 reason may contain the same syllables."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from patent_risk.schemas.labels import MATCH_LABELS, RISK_LEVELS

FIELDS: dict[str, tuple[str, ...]] = {"risk_level": RISK_LEVELS, "match": MATCH_LABELS}


@dataclass(frozen=True)
class DecisionPoint:
    field: str  # "risk_level" or "match"
    element_id: str | None  # a match's element (None for risk_level, or when the object names none)
    offset: int  # character offset of the first character of the label's text in the answer
    label: str  # the label as written (the JSON string's value)


def _string_end(text: str, start: int) -> int:
    """Index of the closing quote of the JSON string whose opening quote is at ``start``."""
    i = start + 1
    while text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return i


def decision_points(answer: str) -> list[DecisionPoint] | None:
    """Where ``answer`` writes each decision, in order: risk_level and every object's match (with that object's
    element_id). None when the answer is not valid JSON (no decision point can be trusted)."""
    try:
        json.loads(answer)
    except ValueError:
        return None
    points: list[DecisionPoint] = []
    frames: list[dict[str, Any]] = []  # one per open object or array
    i, n = 0, len(answer)
    while i < n:
        c = answer[i]
        if c == "{":
            frames.append({"object": True, "expect_key": True, "key": None, "element_id": None, "points": []})
        elif c == "[":
            frames.append({"object": False})
        elif c in "}]":
            frame = frames.pop()
            if frame["object"]:
                for p in frame["points"]:
                    points.append(DecisionPoint(p.field, frame["element_id"] if p.field == "match" else None,
                                                p.offset, p.label))
        elif c == ":":
            frames[-1]["expect_key"] = False
        elif c == "," and frames and frames[-1]["object"]:
            frames[-1]["expect_key"] = True
        elif c == '"':
            end = _string_end(answer, i)
            value = json.loads(answer[i:end + 1])
            frame = frames[-1] if frames else None
            if frame is not None and frame["object"]:
                if frame["expect_key"]:
                    frame["key"] = value
                elif frame["key"] == "element_id":
                    frame["element_id"] = value
                elif frame["key"] in FIELDS:
                    frame["points"].append(DecisionPoint(frame["key"], None, i + 1, value))
            i = end
        i += 1
    return sorted(points, key=lambda p: p.offset)


def first_token_ids(encode: Callable[[str], list[int]]) -> dict[str, dict[str, int]]:
    """Each field's labels' first token ids, {field: {label: id}}; ValueError when two labels of a field start
    with the same token (then a first token cannot tell them apart)."""
    out: dict[str, dict[str, int]] = {}
    for field, labels in FIELDS.items():
        ids = {label: encode(label)[0] for label in labels}
        if len(set(ids.values())) != len(ids):
            raise ValueError(f"the tokenizer starts two {field} labels with the same token ({ids}); label "
                             "probabilities are read from each label's own first token")
        out[field] = ids
    return out


def _token_at(offset: int, n_tokens: int, prefix_chars: Callable[[int], int]) -> int | None:
    """The index of the token whose text starts exactly at character ``offset`` (None: none does; a token spans
    it). ``prefix_chars(k)``: the length of the text of the first k tokens (non-decreasing in k)."""
    lo, hi = 0, n_tokens  # the smallest k with prefix_chars(k) > offset is token k-1's end
    while lo < hi:
        mid = (lo + hi) // 2
        if prefix_chars(mid + 1) > offset:
            hi = mid
        else:
            lo = mid + 1
    if lo >= n_tokens or prefix_chars(lo) != offset:
        return None
    return lo


def label_probabilities(answer: str, token_ids: Sequence[int], token_logprobs: Sequence[dict[int, float]],
                        first_ids: dict[str, dict[str, int]], prefix_chars: Callable[[int], int],
                        token_name: Callable[[int], str] = str) -> dict[str, Any]:
    """The row's ``label_probs``: for risk_level and each match, the probability of each label (renormalized over
    the field's first tokens), the label mass and the label written; or ``{"missing": reason}`` when the answer
    has no decision points to read (not valid JSON). A decision whose label does not begin a token, or begins
    with a token that is not a label's first token (``token_name`` names it), gets ``"unread"`` with the reason
    instead of probabilities: a grammar lets a label be spelled in other tokens, e.g. byte tokens, whose
    probabilities a first token cannot give."""
    points = decision_points(answer)
    if points is None:
        return {"missing": "the answer is not valid JSON: no decision point"}
    risk: dict[str, Any] | None = None
    matches: list[dict[str, Any]] = []
    for p in points:
        ids = first_ids[p.field]
        read: dict[str, Any] = {"label": p.label}
        k = _token_at(p.offset, len(token_ids), prefix_chars)
        if k is None or k >= len(token_logprobs):
            read["unread"] = "the label does not begin a token"
        elif token_ids[k] not in ids.values():
            read["unread"] = (f"the label begins with token {token_ids[k]} ({token_name(token_ids[k])}), not a {p.field} "
                              "label's first token: spelled another way (e.g. in byte tokens)")
        else:
            lp = token_logprobs[k]
            raw = {label: (math.exp(lp[t]) if t in lp and lp[t] is not None and lp[t] > -math.inf else 0.0)
                   for label, t in ids.items()}
            mass = sum(raw.values())
            read["probs"] = {label: round(v / mass if mass > 0 else 0.0, 6) for label, v in raw.items()}
            read["mass"] = round(mass, 6)
        if p.field == "risk_level":
            risk = read
        else:
            matches.append({"element_id": p.element_id, **read})
    return {"risk_level": risk, "matches": matches}


TOKEN_ID_PREFIX = "token_id:"  # how vLLM's OpenAI server names a token with return_tokens_as_token_ids


def _token_id(token: Any) -> int | None:
    if isinstance(token, str) and token.startswith(TOKEN_ID_PREFIX):
        try:
            return int(token[len(TOKEN_ID_PREFIX):])
        except ValueError:
            return None
    return None


def openai_steps(content: Sequence[dict[str, Any]] | None,
                 wanted: set[int]) -> tuple[list[int], list[dict[int, float]]] | None:
    """A chat completion's ``choices[0].logprobs.content`` (asked with ``logprobs``, ``logprob_token_ids`` and
    ``return_tokens_as_token_ids``) as the answer's token ids and, per step, the ``wanted`` ids' log-probabilities:
    what ``label_probabilities`` reads. None when the server did not return what was asked: no logprobs, a token
    not named ``token_id:N``, or a step without every wanted id (a server that ignores the extension)."""
    if content is None:
        return None
    ids: list[int] = []
    steps: list[dict[int, float]] = []
    for entry in content:
        tid = _token_id(entry.get("token"))
        if tid is None:
            return None
        top: dict[int, float] = {}
        for alt in entry.get("top_logprobs") or []:
            t = _token_id(alt.get("token"))
            if t in wanted and alt.get("logprob") is not None:
                top[t] = float(alt["logprob"])
        if not wanted <= top.keys():
            return None
        ids.append(tid)
        steps.append(top)
    return ids, steps
