"""The model-output contract (docs/formats.md section 2): pydantic models, the committed JSON Schema
files generated from them, the per-record specialization used for decoding, and generic validation
used for scoring."""
from __future__ import annotations

import copy
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from .errors import UserError
from .labels import MATCH_LABELS, RISK_LEVELS, SCHEMA_NAMES, MatchLabel, RiskLevel

SCHEMA_DIR = Path(__file__).parent / "json"
REASON_MAX_LENGTH = 40


class MatchV1(BaseModel):
    model_config = ConfigDict(extra="forbid")
    element_id: str = Field(description="The claim element's id, as given in the prompt.")
    match: MatchLabel = Field(description="Whether the product meets the element.")


class OutputV1(BaseModel):
    """v1: labels only."""

    model_config = ConfigDict(extra="forbid", title="patent-risk-output-v1")
    risk_level: RiskLevel = Field(description="Overall infringement risk.")
    matches: list[MatchV1] = Field(description="One entry per claim element, in the claim's order.")


class MatchV2(BaseModel):
    model_config = ConfigDict(extra="forbid")
    element_id: str = Field(description="The claim element's id, as given in the prompt.")
    reason: str = Field(max_length=REASON_MAX_LENGTH, description="A short reason, written before the label.")
    match: MatchLabel = Field(description="Whether the product meets the element.")


class OutputV2(BaseModel):
    """v2: a short reason before each match."""

    model_config = ConfigDict(extra="forbid", title="patent-risk-output-v2")
    risk_level: RiskLevel = Field(description="Overall infringement risk.")
    matches: list[MatchV2] = Field(description="One entry per claim element, in the claim's order.")


class OutputV3(BaseModel):
    """v3: element-first: the element judgements, then the overall risk they imply (labels only)."""

    model_config = ConfigDict(extra="forbid", title="patent-risk-output-v3")
    matches: list[MatchV1] = Field(description="One entry per claim element, in the claim's order.")
    risk_level: RiskLevel = Field(description="Overall infringement risk, judged after the elements.")


OUTPUT_MODELS: dict[str, type[BaseModel]] = {"v1": OutputV1, "v2": OutputV2, "v3": OutputV3}
assert tuple(OUTPUT_MODELS) == SCHEMA_NAMES, "schemas.labels.SCHEMA_NAMES names the same schemas, in order"

# What each schema asks of the model, in a few words (reports and --help show it).
SCHEMA_SUMMARIES = {
    "v1": "labels only: risk_level, then matches",
    "v2": "a short reason before each match: risk_level, then matches with reasons",
    "v3": "element-first: matches, then risk_level (labels only)",
}


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline_refs(defs[node["$ref"].split("/")[-1]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _close_objects(node: Any) -> Any:
    """Forbid extra keys in every object and drop pydantic's inner titles."""
    if isinstance(node, dict):
        node.pop("title", None)
        if node.get("type") == "object":
            node["additionalProperties"] = False
        for v in node.values():
            _close_objects(v)
    elif isinstance(node, list):
        for v in node:
            _close_objects(v)
    return node


def generate_schema(name: str) -> dict[str, Any]:
    """Build the JSON Schema of output ``name`` from its pydantic model: self-contained, closed objects."""
    model = OUTPUT_MODELS[name]
    raw = model.model_json_schema()
    schema = _close_objects(_inline_refs(raw, raw.get("$defs", {})))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": model.model_config["title"], **schema}


def schema_path(name: str) -> Path:
    return SCHEMA_DIR / f"output_{name}.schema.json"


def canonical_json(obj: Any) -> str:
    """Compact JSON that keeps key order: a schema's property order is part of what it asks for (v1 and
    v3 have the same properties in a different order, and a constrained decoder writes them in that order)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def schema_hash(schema: dict[str, Any]) -> str:
    """sha256 of the order-keeping compact JSON of a schema (first 16 hex digits)."""
    return hashlib.sha256(canonical_json(schema).encode("utf-8")).hexdigest()[:16]


def legacy_schema_hash(schema: dict[str, Any]) -> str:
    """The hash runs and adapters recorded before property order counted (sorted-key JSON): read, never written."""
    text = json.dumps(schema, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def current_schema_hash(name: Any, recorded: Any) -> Any:
    """A recorded schema hash as this version writes it: the legacy (sorted-key) hash of the committed schema
    ``name`` becomes its current hash, so that runs and adapters recorded before the change still resume and
    compare as the same schema; any other value is returned as it is."""
    if isinstance(name, str) and name in OUTPUT_MODELS and isinstance(recorded, str):
        committed = load_schema(name)
        if recorded == legacy_schema_hash(committed):
            return schema_hash(committed)
    return recorded


def schema_names() -> list[str]:
    return sorted(OUTPUT_MODELS)


@lru_cache(maxsize=None)
def _load_schema_text(name: str) -> str:
    if name not in OUTPUT_MODELS:
        raise UserError(f"unknown schema {name!r}; known schemas: {', '.join(schema_names())}")
    return schema_path(name).read_text(encoding="utf-8")


def load_schema(name: str) -> dict[str, Any]:
    """The committed JSON Schema file of output ``name`` (what runs are scored against)."""
    return json.loads(_load_schema_text(name))


def write_schema_files() -> list[Path]:
    SCHEMA_DIR.mkdir(exist_ok=True)
    written = []
    for name in schema_names():
        path = schema_path(name)
        path.write_text(json.dumps(generate_schema(name), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written


def specialize(schema: dict[str, Any], element_ids: list[str]) -> dict[str, Any]:
    """The decoding form of ``schema`` for one record: ``matches`` fixed to the record's elements,
    in order, each ``element_id`` a ``const`` (prefixItems, no further items)."""
    out = copy.deepcopy(schema)
    out.pop("$schema", None)
    matches = out["properties"]["matches"]
    item = matches.pop("items")
    prefix = []
    for eid in element_ids:
        one = copy.deepcopy(item)
        one["properties"]["element_id"] = {"type": "string", "const": eid}
        prefix.append(one)
    matches.update(prefixItems=prefix, items=False, minItems=len(element_ids), maxItems=len(element_ids))
    return out


@lru_cache(maxsize=None)
def _key_orders(schema_name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The committed schema's property order: top-level keys, and the keys of each match."""
    schema = load_schema(schema_name)
    return tuple(schema["properties"]), tuple(schema["properties"]["matches"]["items"]["properties"])


def has_reason(schema_name: str) -> bool:
    """Whether each match of ``schema_name`` carries a ``reason``."""
    return "reason" in _key_orders(schema_name)[1]


def output_object(schema_name: str, risk_level: str, matches: list[dict[str, Any]]) -> dict[str, Any]:
    """An output object with its keys in ``schema_name``'s order (risk_level first, or matches first), each
    match's keys in the schema's order too (element_id, reason when the schema has one, match)."""
    top, item_keys = _key_orders(schema_name)
    values = {"risk_level": risk_level, "matches": [{k: m[k] for k in item_keys} for m in matches]}
    return {k: values[k] for k in top}


def longest_instance(schema_name: str, element_ids: list[str], filler: str = "가") -> dict[str, Any]:
    """The valid output with the longest labels (and, with reasons, reasons at their maximum length)."""
    longest_match = max(MATCH_LABELS, key=len)
    matches = [{"element_id": eid, "reason": filler * REASON_MAX_LENGTH, "match": longest_match} for eid in element_ids]
    return output_object(schema_name, max(RISK_LEVELS, key=len), matches)


def max_tokens_budget(schema_name: str, element_ids: list[str], count_tokens: Callable[[str], int]) -> int:
    """A max_tokens that fits the longest valid answer, compact or indented (xgrammar indents), plus the
    end-of-turn token and a margin. Labels are tried one by one, since token counts need not follow length."""
    worst = 0
    fillers = ["가", "뷁", "a"] if has_reason(schema_name) else ["가"]
    for risk in RISK_LEVELS:
        for match in MATCH_LABELS:
            for filler in fillers:
                inst = longest_instance(schema_name, element_ids, filler)
                inst["risk_level"] = risk
                for m in inst["matches"]:
                    m["match"] = match
                for text in (render_compact(inst), json.dumps(inst, ensure_ascii=False, indent=2)):
                    worst = max(worst, count_tokens(text))
    return worst + 8 + worst // 10


def render_compact(obj: dict[str, Any]) -> str:
    """The answer text the model is trained to write: compact JSON, Korean unescaped."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@lru_cache(maxsize=None)
def _validator(name: str):
    import jsonschema

    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(obj: Any, schema_name: str) -> list[str]:
    """Errors of ``obj`` against the generic (not record-specialized) schema; empty when valid."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in _validator(schema_name).iter_errors(obj)]
