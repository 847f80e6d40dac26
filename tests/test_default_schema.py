"""An adapter knows the output schema it was trained to write (its manifest.json): evaluate batch, bench and
curve decode and score in it unless --schema says otherwise (evaluate.batch.default_schema). Pure: no model."""
from __future__ import annotations

import json

import pytest

from patent_risk.evaluate.batch import default_schema
from patent_risk.schemas.errors import UserError


def _adapter(tmp_path, name, schema):
    d = tmp_path / name
    d.mkdir()
    if schema is not None:
        (d / "manifest.json").write_text(json.dumps({"schema": {"name": schema, "hash": "x"}}), encoding="utf-8")
    return d


def test_the_adapters_schema_is_the_default(tmp_path):
    assert default_schema(None, [_adapter(tmp_path, "a", "v3")]) == "v3"


def test_a_given_schema_wins(tmp_path):
    assert default_schema("v1", [_adapter(tmp_path, "a", "v3")]) == "v1"


def test_without_adapter_or_manifest_v1(tmp_path):
    assert default_schema(None, []) == "v1"
    assert default_schema(None, [_adapter(tmp_path, "a", None)]) == "v1"


def test_adapters_that_disagree_are_refused_by_name(tmp_path):
    a, b = _adapter(tmp_path, "a", "v3"), _adapter(tmp_path, "b", "v2")
    with pytest.raises(UserError, match=r"different output schemas .*a: v3.*b: v2.*--schema"):
        default_schema(None, [a, b])
    assert default_schema("v3", [a, b]) == "v3"
