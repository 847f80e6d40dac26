"""Prompt rendering: the one place where a record becomes chat messages and a label becomes the
answer text. Training and evaluation both call these, and both arms of an evaluation get the
same prompt (CONTRACT.md section 2)."""
from __future__ import annotations

import hashlib
from typing import Any

from .errors import UserError
from .labels import MATCH_LABELS, RISK_LEVELS
from .output import has_reason, output_object, render_compact
from .records import Label, Record

PROMPT_VERSION = "p1"

SYSTEM = "You judge patent infringement risk. Answer with JSON only."

MATCH_GLOSS = {"대응": "met", "판단불가": "cannot tell", "미대응": "not met"}


def answer_format(schema_name: str, first_element_id: str) -> str:
    """The answer's shape as the prompt shows it, in the schema's key order, e.g.
    ``{"risk_level":"…","matches":[{"element_id":"E1","match":"…"},…]}`` for v1."""
    shape = output_object(schema_name, "…", [{"element_id": first_element_id, "reason": "…", "match": "…"}])
    return render_compact(shape).replace("}]", "},…]", 1)


def render_messages(record: Record, schema_name: str = "v1") -> list[dict[str, str]]:
    """The chat messages for one record. The claim itself is not repeated: its elements carry its
    text, and prompt tokens dominate the cost on CPU."""
    elements = "\n".join(f"{e.id}: {e.text}" for e in record.elements)
    ids = ", ".join(record.element_ids)
    user = (
        f"Claim elements:\n{elements}\nProduct:\n{record.query}\n"
        f"For each element ({ids}) give match: {', '.join(f'{m} ({MATCH_GLOSS[m]})' for m in MATCH_LABELS)}; "
        f"and risk_level: {', '.join(RISK_LEVELS)}.\n"
        f"Format: {answer_format(schema_name, record.element_ids[0])}"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def label_to_output(label: Label, schema_name: str = "v1") -> dict[str, Any]:
    """The output object in ``schema_name`` that a record's gold label corresponds to, keys in the schema's
    order. A schema with a ``reason`` per match takes each element's ``label.matches[].reason``; one missing
    is a UserError naming the element (an answer is never written with an empty or made-up reason)."""
    if has_reason(schema_name):
        missing = [m.element_id for m in label.matches if not m.reason]
        if missing:
            raise UserError(f"schema {schema_name} writes a reason before each match, and label.matches has none "
                            f"for element(s) {', '.join(missing)}; give each label.matches[] a \"reason\" "
                            f"(the demo data has them: patent-risk datagen), or train schema v1 or v3")
    matches = [{"element_id": m.element_id, "reason": m.reason, "match": m.match} for m in label.matches]
    return output_object(schema_name, label.risk_level, matches)


def render_answer(label: Label, schema_name: str = "v1") -> str:
    """The assistant turn a model is trained to produce for a label in ``schema_name``: compact JSON."""
    return render_compact(label_to_output(label, schema_name))


def prompt_fingerprint(schema_name: str) -> str:
    """A hash of the prompt template, recorded in runs and adapters."""
    probe = Record(id="x", patent_id="p", claim="", elements=[{"id": "E1", "text": "t"}], query="q")
    text = PROMPT_VERSION + repr(render_messages(probe, schema_name))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The system text folded into the first user turn (``system + "\\n\\n" + user``), as Gemma's own
    template does, for chat templates that have no system role."""
    if len(messages) >= 2 and messages[0]["role"] == "system" and messages[1]["role"] == "user":
        return [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}, *messages[2:]]
    return messages


_PROBE = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]


def chat_format(tokenizer) -> str:
    """How a tokenizer's chat template takes this project's messages: ``system`` (as they are) or
    ``fold`` (the system text folded into the first user turn, for templates that refuse a system role).
    A template that renders neither, or a tokenizer without one (a pretrained model), is a UserError that
    names the model, never a raw Jinja traceback."""
    name = getattr(tokenizer, "name_or_path", "the model")
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{name}: its tokenizer has no chat template (a pretrained, not instruction-tuned, model?); "
                        "give a model that ships one, or install one in its tokenizer_config.json / chat_template.jinja")
    try:
        tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
        return "system"
    except Exception as first:  # noqa: BLE001 - jinja2's TemplateError and the template's own raise_exception
        try:
            tokenizer.apply_chat_template(fold_system(_PROBE), tokenize=False, add_generation_prompt=True)
        except Exception as second:  # noqa: BLE001
            raise UserError(f"{name}: its chat template cannot render a system + user prompt ({first}) nor a "
                            f"user turn alone ({second})") from None
        return "fold"


def messages_for(tokenizer, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """``messages`` as ``tokenizer``'s chat template takes them (see ``chat_format``)."""
    return fold_system(messages) if chat_format(tokenizer) == "fold" else messages
