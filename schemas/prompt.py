"""Prompt rendering: the one place where a record becomes chat messages and a label becomes the
answer text. Training and evaluation both call these, and both arms of an evaluation get the
same prompt (docs/formats.md section 2).

The prompt is the built-in one (version p1) or a user's Jinja template (``--prompt-template FILE``, a
``Prompt``): the template renders the user turn from the record's fields, and a top-level
``{% set system = "..." %}`` in it gives a system turn (none without it); the model's own chat template then
wraps the turns as usual. A template sees ``id``, ``patent_id``, ``claim``, ``query``, ``elements`` (each with
``id`` and ``text``), ``element_ids``, ``meta``, ``record`` (the whole line as a dict: fields beyond the
contract's too), ``answer_format`` (the answer's JSON shape in the run's schema), ``match_labels``,
``risk_levels`` and ``schema``. An undefined name is an error that names the template, never an empty string.
The adapter's manifest records the prompt it was trained with (version, hash, template text), and evaluation
uses it unless told otherwise."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
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


@dataclass(frozen=True)
class Prompt:
    """Which prompt renders the records: the built-in one (``template`` None) or a Jinja template's text.
    ``source`` says where it came from (a file, an adapter's manifest.json); not part of its identity."""

    version: str = PROMPT_VERSION
    template: str | None = None
    source: str | None = None

    @property
    def builtin(self) -> bool:
        return self.template is None

    def fingerprint(self, schema_name: str) -> str:
        """The hash recorded in runs and adapters: of the rendered built-in prompt, of a template's text."""
        if self.builtin:
            return prompt_fingerprint(schema_name)
        return hashlib.sha256(f"template|{schema_name}|{self.template}".encode("utf-8")).hexdigest()[:16]

    def describe(self, schema_name: str) -> dict[str, Any]:
        """What run.json and the adapter's manifest record: version and hash (the run's identity), and a
        template's text and source."""
        doc: dict[str, Any] = {"version": self.version, "hash": self.fingerprint(schema_name)}
        if not self.builtin:
            doc.update(template=self.template, source=self.source)
        return doc


BUILTIN = Prompt()
TEMPLATE_VERSION = "template"


def _jinja_env():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def load_prompt_template(path: str | Path) -> Prompt:
    """A ``Prompt`` from a Jinja template file; a missing file or a syntax error is a UserError naming the file
    (and line)."""
    from jinja2 import TemplateSyntaxError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read the prompt template ({e.strerror or e})") from None
    if not text.strip():
        raise UserError(f"{path}: the prompt template is empty")
    try:
        _jinja_env().from_string(text)
    except TemplateSyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: not a Jinja template: {e.message}") from None
    return Prompt(TEMPLATE_VERSION, text, str(path))


def prompt_from_record(doc: Any, source: str) -> Prompt | None:
    """The prompt a manifest's ``prompt`` entry describes (None: it does not say, or names a built-in version
    this code does not have)."""
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("template"), str) and doc["template"].strip():
        return Prompt(str(doc.get("version") or TEMPLATE_VERSION), doc["template"], source)
    return BUILTIN if doc.get("version") == PROMPT_VERSION else None


def _template_messages(prompt: Prompt, record: Record, schema_name: str) -> list[dict[str, str]]:
    from jinja2 import TemplateError

    fields = record.model_dump(mode="json")
    variables = {**fields, "record": fields, "element_ids": record.element_ids,
                 "answer_format": answer_format(schema_name, record.element_ids[0]),
                 "match_labels": list(MATCH_LABELS), "risk_levels": list(RISK_LEVELS), "schema": schema_name}
    try:
        module = _jinja_env().from_string(prompt.template).make_module(variables)
        user = str(module).strip()
        system = getattr(module, "system", None)
    except TemplateError as e:
        raise UserError(f"{prompt.source or 'prompt template'}: rendering record {record.id!r}: {e}") from None
    if not user:
        raise UserError(f"{prompt.source or 'prompt template'}: renders an empty prompt for record {record.id!r}")
    messages = [{"role": "system", "content": str(system).strip()}] if system else []
    return messages + [{"role": "user", "content": user}]


def check_renders(prompt: Prompt | None, records: list[Record], schema_name: str) -> None:
    """Render every record with a template prompt now (a UserError naming the template and the record), so that a
    typo in it stops a run before a model or an engine is loaded, not after."""
    if prompt is not None and not prompt.builtin:
        for record in records:
            _template_messages(prompt, record, schema_name)


def render_messages(record: Record, schema_name: str = "v1", prompt: Prompt | None = None) -> list[dict[str, str]]:
    """The chat messages for one record, by ``prompt`` (the built-in one by default). The built-in prompt does
    not repeat the claim itself: its elements carry its text, and prompt tokens dominate the cost on CPU."""
    if prompt is not None and not prompt.builtin:
        return _template_messages(prompt, record, schema_name)
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
