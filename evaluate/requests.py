"""Pure translation from records to generation requests: the same prompt for both arms, the
per-record schema only in the constrained arm, max_tokens from the schema. No engine here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from schemas.output import load_schema, max_tokens_budget, specialize
from schemas.prompt import render_messages
from schemas.records import Record


@dataclass(frozen=True)
class GenRequest:
    record_id: str
    messages: list[dict[str, str]]
    max_tokens: int
    json_schema: dict[str, Any] | None  # None: unconstrained


def build_requests(records: list[Record], schema_name: str, constrained: bool,
                   count_tokens: Callable[[str], int]) -> list[GenRequest]:
    schema = load_schema(schema_name)
    out = []
    for rec in records:
        out.append(GenRequest(
            record_id=rec.id,
            messages=render_messages(rec, schema_name),
            max_tokens=max_tokens_budget(schema_name, rec.element_ids, count_tokens),
            json_schema=specialize(schema, rec.element_ids) if constrained else None,
        ))
    return out


def sampling_summary(seed: int = 0) -> dict[str, Any]:
    """The sampling parameters both arms use (recorded in run.json)."""
    return {"temperature": 0.0, "top_p": 1.0, "seed": seed, "max_tokens": "per record: schema budget"}
