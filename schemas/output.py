"""The model-output contract (CONTRACT.md section 2): pydantic models, the committed JSON Schema
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
from .labels import MATCH_LABELS, RISK_LEVELS, MatchLabel, RiskLevel

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


OUTPUT_MODELS: dict[str, type[BaseModel]] = {"v1": OutputV1, "v2": OutputV2}


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
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def schema_hash(schema: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a schema (first 16 hex digits)."""
    return hashlib.sha256(canonical_json(schema).encode("utf-8")).hexdigest()[:16]


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


def longest_instance(schema_name: str, element_ids: list[str], filler: str = "가") -> dict[str, Any]:
    """The valid output with the longest labels (and, in v2, reasons at their maximum length)."""
    longest_risk = max(RISK_LEVELS, key=len)
    longest_match = max(MATCH_LABELS, key=len)
    matches = []
    for eid in element_ids:
        m: dict[str, Any] = {"element_id": eid}
        if schema_name == "v2":
            m["reason"] = filler * REASON_MAX_LENGTH
        m["match"] = longest_match
        matches.append(m)
    return {"risk_level": longest_risk, "matches": matches}


def max_tokens_budget(schema_name: str, element_ids: list[str], count_tokens: Callable[[str], int]) -> int:
    """A max_tokens that fits the longest valid answer, compact or indented (xgrammar indents), plus the
    end-of-turn token and a margin. Labels are tried one by one, since token counts need not follow length."""
    worst = 0
    fillers = ["가", "뷁", "a"] if schema_name == "v2" else ["가"]
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
