"""The label vocabularies of docs/formats.md. Labels stay in Korean, exactly as written there."""
from typing import Literal, get_args

RiskLevel = Literal["높음", "애매", "낮음"]
MatchLabel = Literal["대응", "판단불가", "미대응"]

RISK_LEVELS: tuple[str, ...] = get_args(RiskLevel)
MATCH_LABELS: tuple[str, ...] = get_args(MatchLabel)
INVALID = "invalid"

SchemaName = Literal["v1", "v2", "v3"]
# The output schemas' names, importable without pydantic (the CLI's choices); schemas.output defines each.
SCHEMA_NAMES: tuple[str, ...] = get_args(SchemaName)
