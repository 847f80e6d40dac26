"""Turning records into training features with the prompt masked out of the loss.

The prompt is rendered by the chat template with a generation prompt, the completion is what the
template adds for the assistant turn (the answer and its end-of-turn marker). Prompt tokens get
label -100; the answer and its end-of-turn token are trained. Pure: needs only a tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from patent_risk.schemas.errors import UserError
from patent_risk.schemas.prompt import Prompt, messages_for, render_answer, render_messages
from patent_risk.schemas.records import Record

IGNORE_INDEX = -100


@dataclass
class Features:
    input_ids: list[int]
    labels: list[int]

    def as_dict(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "attention_mask": [1] * len(self.input_ids), "labels": self.labels}


def _encode(tokenizer, text: str) -> list[int]:
    # The chat template already writes BOS where the model wants it; tokenizing the rendered text
    # again with special tokens would add a second BOS (Gemma's tokenizer adds one by default).
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer, record: Record, schema_name: str = "v1", prompt: Prompt | None = None) -> list[int]:
    """The prompt token ids exactly as inference sees them (with the template's BOS, once)."""
    messages = messages_for(tokenizer, render_messages(record, schema_name, prompt))
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = _encode(tokenizer, text)
    bos = tokenizer.bos_token_id
    if getattr(tokenizer, "add_bos_token", False) and bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def build_features(tokenizer, record: Record, schema_name: str = "v1", prompt: Prompt | None = None) -> Features:
    """The record's prompt (masked) and its label written in ``schema_name`` (trained): for a schema with
    reasons (v2), each element's ``label.matches[].reason``."""
    if record.label is None:
        raise UserError(f"record {record.id!r}: no label; training needs labelled records")
    try:
        answer = render_answer(record.label, schema_name)
    except UserError as e:
        raise UserError(f"record {record.id!r}: {e}") from None
    messages = messages_for(tokenizer, render_messages(record, schema_name, prompt))
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise UserError("the chat template renders the prompt differently with and without the answer; cannot mask the prompt")
    completion = full_text[len(prompt_text):]
    p_ids = prompt_ids(tokenizer, record, schema_name, prompt)
    c_ids = _through_end_of_turn(tokenizer, _encode(tokenizer, completion))
    return Features(input_ids=p_ids + c_ids, labels=[IGNORE_INDEX] * len(p_ids) + list(c_ids))


def stop_token_ids(tokenizer) -> set[int]:
    """The ids generation stops on: the tokenizer's eos and the model's generation_config eos ids
    (Gemma 3 -it: ``<eos>`` 1 and ``<end_of_turn>`` 106), read from the tokenizer's folder."""
    import json
    from pathlib import Path

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    path = Path(getattr(tokenizer, "name_or_path", "") or ".") / "generation_config.json"
    try:
        eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError):
        eos = None
    ids |= set(eos) if isinstance(eos, list) else ({eos} if isinstance(eos, int) else set())
    return ids


def _through_end_of_turn(tokenizer, ids: list[int]) -> list[int]:
    """The completion up to and including the first token generation stops on: the answer and its
    end-of-turn marker are trained; what the template writes after it (Gemma: a newline) never is
    generated, so it gets no label and no place in the sequence."""
    stops = stop_token_ids(tokenizer)
    for i, t in enumerate(ids):
        if t in stops:
            return ids[: i + 1]
    return ids


def make_collator(tokenizer):
    """Dynamic padding that keeps precomputed labels (pads labels with -100).

    Not DataCollatorForLanguageModeling(mlm=False): it rebuilds labels from input_ids, unmasking
    the prompt, and masks every pad token, which is the end-of-turn token for many chat models.
    """
    from transformers import DataCollatorForSeq2Seq

    # Training pads on the right (Gemma's tokenizer pads on the left, for batched generation): the labels
    # are padded on the same side as the inputs either way, but right padding keeps every sequence at the
    # positions it has at inference.
    tokenizer.padding_side = "right"
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True, return_tensors="pt")
