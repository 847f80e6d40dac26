"""Pure translation from records to generation requests: the same prompt for both arms, the
per-record schema only in the constrained arm, max_tokens from the schema. No engine here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from patent_risk.schemas.output import load_schema, max_tokens_budget, specialize
from patent_risk.schemas.prompt import Prompt, render_messages
from patent_risk.schemas.records import Record

# The structured-outputs options of every constrained request, offline and through a server alike
# (vLLM's StructuredOutputsParams fields besides the schema itself); recorded in run.json.
STRUCTURED_OUTPUT_OPTIONS: dict[str, Any] = {"disable_any_whitespace": True}


@dataclass(frozen=True)
class GenRequest:
    record_id: str
    messages: list[dict[str, str]]
    max_tokens: int
    json_schema: dict[str, Any] | None  # None: unconstrained
    label_probs: bool = False  # read each decision's label probabilities (runtime.label_probs)

    def structured_outputs(self) -> dict[str, Any] | None:
        """vLLM's ``structured_outputs`` for this request: ``StructuredOutputsParams(**it)`` offline, the
        request body's ``structured_outputs`` field through a server; None when unconstrained."""
        if self.json_schema is None:
            return None
        return {"json": self.json_schema, **STRUCTURED_OUTPUT_OPTIONS}

    def chat_body_extra(self) -> dict[str, Any] | None:
        """The ``extra_body`` of this request to vLLM's OpenAI-compatible chat endpoint."""
        structured = self.structured_outputs()
        return None if structured is None else {"structured_outputs": structured}


def build_requests(records: list[Record], schema_name: str, constrained: bool,
                   count_tokens: Callable[[str], int], prompt: Prompt | None = None,
                   label_probs: bool = False) -> list[GenRequest]:
    """One request per record, its messages rendered by ``prompt`` (None: the built-in prompt)."""
    schema = load_schema(schema_name)
    out = []
    for rec in records:
        out.append(GenRequest(
            record_id=rec.id,
            messages=render_messages(rec, schema_name, prompt),
            max_tokens=max_tokens_budget(schema_name, rec.element_ids, count_tokens),
            json_schema=specialize(schema, rec.element_ids) if constrained else None,
            label_probs=label_probs,
        ))
    return out


def max_tokens_summary(requests: list[GenRequest]) -> dict[str, Any]:
    """What run.json records of the per-record max_tokens budgets: the rule, their range and sum."""
    budgets = [r.max_tokens for r in requests]
    return {"rule": "per record: schema budget", "min": min(budgets, default=None),
            "max": max(budgets, default=None), "total": sum(budgets)}


def sampling_summary(seed: int = 0) -> dict[str, Any]:
    """The sampling parameters both arms use (recorded in run.json)."""
    return {"temperature": 0.0, "top_p": 1.0, "seed": seed, "max_tokens": "per record: schema budget"}
