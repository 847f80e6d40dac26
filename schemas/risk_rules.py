"""Rules that say which overall risk_level a set of element matches implies (`evaluate report --risk-rule`).

A report's ``risk_consistent`` asks whether a model's own risk_level agrees with its own predicted matches
under the dataset's rule. The risk is always the model's: a rule never replaces or derives it.

``all-elements`` (the demo data's rule, datagen.patents): every element 대응 -> 높음; any 미대응 -> 낮음;
otherwise (some 판단불가, no 미대응) -> 애매. It is the all-elements rule of patent infringement: a product
infringes only when it meets every element of the claim.
"""
from __future__ import annotations

from typing import Callable, Iterable

from .errors import UserError


def all_elements(matches: Iterable[str]) -> str:
    """All 대응 -> 높음; any 미대응 -> 낮음; otherwise 애매 (an empty list implies 높음: nothing is unmet)."""
    matches = list(matches)
    if "미대응" in matches:
        return "낮음"
    if all(m == "대응" for m in matches):
        return "높음"
    return "애매"


RISK_RULES: dict[str, Callable[[Iterable[str]], str]] = {"all-elements": all_elements}


def risk_rule(name: str) -> Callable[[Iterable[str]], str]:
    """The rule named ``name``, or a UserError listing the known ones."""
    try:
        return RISK_RULES[name]
    except KeyError:
        raise UserError(f"unknown risk rule {name!r}; known rules: {', '.join(RISK_RULES)}") from None
