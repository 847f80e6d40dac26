"""How a query states each element: the templates, units, value formats and phrasings of the demo dataset
(the rules that judge what it states: datagen.patents).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

from .patents import _AMOUNT_MISSING, _AMOUNT_VAGUE, ElementSpec, F, PatentSpec, signed_distance

# Bands of signed distance the generator samples from, per intended case.
_BANDS: dict[str, tuple[Fraction | None, Fraction | None]] = {
    "in": (Fraction(65, 1000), None),
    "in_edge": (Fraction(65, 1000), Fraction(15, 100)),
    "near": (Fraction(-4, 100), Fraction(4, 100)),
    "out_edge": (Fraction(-15, 100), Fraction(-65, 1000)),
    "out": (None, Fraction(-20, 100)),
}


MAX_QUERY_CHARS = 120


# Query templates. Shared ones appear in train and eval; novel ones only in eval (meta.novel).
SHARED_TEMPLATES = ("colon_list", "dash_slash", "bracket_semicolon", "formula_sentence", "compact_plus")


NOVEL_TEMPLATES = ("value_first", "key_value", "english_header", "narrative")


_AMOUNT_UNITS = ("중량%", "wt%", "%", " 중량%", " wt%")


_NOVEL_AMOUNT_UNITS = (" w/w%", "%(w/w)")


def _decimals(step: Fraction) -> int:
    d = 0
    while (step * 10 ** d).denominator != 1:
        d += 1
    return d


def _fmt(value: Fraction, decimals: int, *, keep_zeros: bool = False, comma: bool = False) -> str:
    text = f"{float(value):,.{decimals}f}" if comma else f"{float(value):.{decimals}f}"
    if decimals and not keep_zeros:
        text = text.rstrip("0").rstrip(".")
    return text


@lru_cache(maxsize=None)
def _candidates(el: ElementSpec, case: str) -> tuple[Fraction, ...]:
    """The values on the element's grid whose signed distance lies in the case's band."""
    ref_hi = el.hi if el.hi is not None else el.lo * 3
    window_lo = el.lo * F(3, 10) if el.lo is not None else ref_hi * F(3, 10)
    window_hi = ref_hi * F(9, 5)
    if el.unit == "중량%":
        window_hi = min(window_hi, F(95))
    if el.unit == "pH":
        window_lo, window_hi = max(window_lo, F(3)), min(window_hi, F(10))
    if el.unit == "SPF":
        window_lo, window_hi = max(window_lo, F(5)), min(window_hi, F(50))
    lower, upper = _BANDS[case]
    k = -(-window_lo // el.step)
    found = []
    while k * el.step <= window_hi:
        v = k * el.step
        s = signed_distance(v, el.lo, el.hi)
        if (lower is None or s >= lower) and (upper is None or s <= upper):
            found.append(v)
        k += 1
    if not found:
        raise ValueError(f"{el.id}: no value for case {case}")
    return tuple(found)


def _sample_value(rng: random.Random, el: ElementSpec, case: str) -> Fraction:
    """A value for the case; near-boundary values land exactly on a boundary 30% of the time."""
    candidates = _candidates(el, case)
    if case == "near":
        bounds = [b for b in (el.lo, el.hi) if b is not None and b in candidates]
        if bounds and rng.random() < 0.3:
            return rng.choice(bounds)
    return rng.choice(candidates)


@dataclass
class _Style:
    template: str
    novel: bool
    features: list[str] = field(default_factory=list)
    total_weight: Fraction = Fraction(0)  # sum of the 중량% the query states

    def pick_name(self, rng: random.Random, el: ElementSpec) -> str:
        if self.novel and el.novel_names and rng.random() < 0.5:
            name = rng.choice(el.novel_names)
            self.features.append(f"name:{name}")
            return name
        return rng.choice(el.names)

    def amount_unit(self, rng: random.Random) -> str:
        if self.novel and rng.random() < 0.3:
            unit = rng.choice(_NOVEL_AMOUNT_UNITS)
            self.features.append(f"unit:{unit.strip()}")
            return unit
        return rng.choice(_AMOUNT_UNITS)

    def novel_variant(self, rng: random.Random, label: str, p: float = 0.4) -> bool:
        if self.novel and rng.random() < p:
            self.features.append(label)
            return True
        return False


def _approx(rng: random.Random) -> str:
    return "약 " if rng.random() < 0.12 else ""


def _render_amount(rng: random.Random, style: _Style, name: str, value: Fraction, step: Fraction) -> str:
    style.total_weight += value
    num = _approx(rng) + _fmt(value, _decimals(step))
    unit = style.amount_unit(rng)
    if style.template == "value_first":
        return f"{num}{unit.strip()} {name}"
    return f"{name} {num}{unit}"


def _render_property(rng: random.Random, style: _Style, el: ElementSpec, value: Fraction) -> str:
    approx = _approx(rng)
    if el.unit == "cps":
        if style.novel_variant(rng, "unit:Pa·s", 0.25):
            return f"점도 {approx}{_fmt(value / 1000, 1)} Pa·s"
        if style.novel_variant(rng, "unit:mPa·s", 0.25):
            return f"점도 {approx}{_fmt(value, 0, comma=True)} mPa·s"
        num = _fmt(value, 0, comma=rng.random() < 0.7)
        return f"점도 {approx}{num}{rng.choice(('cps', ' cps', ' cP', 'cP'))}"
    if el.unit == "pH":
        num = _fmt(value, 1, keep_zeros=True)
        if style.novel_variant(rng, "unit:pH값"):
            return f"pH값 {num}"
        return rng.choice((f"pH {num}", f"pH{num}", f"pH {approx}{num}"))
    if el.unit == "SPF":
        num = _fmt(value, 0)
        if style.novel_variant(rng, "unit:자외선차단지수"):
            return f"자외선차단지수 {num}"
        if value == 50 and rng.random() < 0.5:
            return "SPF50+ PA++++"
        return rng.choice((f"SPF {num}", f"SPF{num}"))
    if el.unit == "g":
        num = _fmt(value, 0)
        if style.novel_variant(rng, "unit:gf"):
            return f"경도 {num}gf"
        return rng.choice((f"경도 {approx}{num}g", f"경도 {num} g"))
    raise ValueError(el.unit)


def _typical_amount(rng: random.Random, el: ElementSpec) -> Fraction:
    lo, hi, step = el.typical
    return step * rng.randint(int(lo / step), int(hi / step))


def _render_element(rng: random.Random, style: _Style, el: ElementSpec, case: str) -> tuple[str | None, dict]:
    """Text for one element (None when left out) and the fact it states."""
    if el.numeric and case in _BANDS:
        value = _sample_value(rng, el, case)
        if el.kind == "amount":
            text = _render_amount(rng, style, style.pick_name(rng, el), value, el.step)
        else:
            text = _render_property(rng, style, el, value)
        return text, {"state": "value", "value": value}
    if case == "present":
        if el.kind == "form":
            return style.pick_name(rng, el), {"state": "present"}
        name = style.pick_name(rng, el)
        if el.typical and rng.random() < 0.5:
            name = _render_amount(rng, style, name, _typical_amount(rng, el), el.typical[2])
        return name, {"state": "present"}
    if case == "absent":
        if el.kind == "form":
            return rng.choice(el.alternatives), {"state": "absent"}
        if el.alternatives and (not el.absent_phrases or rng.random() < 0.6):
            alt = rng.choice(el.alternatives)
            if el.lo is not None:
                text = _render_amount(rng, style, alt, _sample_value(rng, el, "in"), el.step)
            elif el.typical and rng.random() < 0.5:
                text = _render_amount(rng, style, alt, _typical_amount(rng, el), el.typical[2])
            else:
                text = alt
            return text, {"state": "absent"}
        return rng.choice(el.absent_phrases), {"state": "absent"}
    if case == "missing":
        if el.kind == "form":
            return "", {"state": "missing"}
        if el.omit_when_missing and rng.random() < 0.5:
            return None, {"state": "missing"}
        if el.kind == "amount":
            return f"{style.pick_name(rng, el)} {rng.choice(_AMOUNT_MISSING)}", {"state": "missing"}
        return rng.choice(el.missing_phrases), {"state": "missing"}
    if case == "vague":
        if el.kind == "amount":
            return f"{style.pick_name(rng, el)} {rng.choice(_AMOUNT_VAGUE)}", {"state": "vague"}
        return rng.choice(el.vague_phrases), {"state": "vague"}
    raise ValueError(f"{el.id}: case {case} does not apply to a {el.kind} element")


def _join(style: _Style, code: str, form: str, tokens: list[str]) -> str:
    t = style.template
    if t == "colon_list":
        return f"제품 {code} {form}: " + ", ".join(tokens)
    if t == "dash_slash":
        return f"{form} 시제품 {code} - " + " / ".join(tokens)
    if t == "bracket_semicolon":
        return f"[{code}] {form}; " + "; ".join(tokens)
    if t == "formula_sentence":
        body = tokens[0] if len(tokens) == 1 else ", ".join(tokens[:-1]) + " 및 " + tokens[-1]
        return f"{code} {form} 처방: {body}"
    if t == "compact_plus":
        return f"{code}({form}) " + " + ".join(tokens)
    if t == "value_first":
        return f"{form} {code}: " + ", ".join(tokens)
    if t == "key_value":
        return f"{code} {form} | " + " | ".join(tokens)
    if t == "english_header":
        return f"Sample {code} / {form}: " + ", ".join(tokens)
    if t == "narrative":
        return f"{code} {form}은(는) " + ", ".join(tokens) + "(으)로 구성됨"
    raise ValueError(t)


def _key_value_token(el: ElementSpec, text: str) -> str:
    if text.startswith(el.role + " "):
        return el.role + "=" + text[len(el.role) + 1:]
    return text if el.kind == "property" else f"{el.role}={text}"


def _render_query(rng: random.Random, patent: PatentSpec, cases: dict[str, str], style: _Style,
                  code: str) -> tuple[str, dict[str, dict]]:
    facts: dict[str, dict] = {}
    tokens: list[str] = []
    header = None
    for el in patent.elements:
        text, fact = _render_element(rng, style, el, cases[el.id])
        facts[el.id] = fact
        if el.kind == "form":
            product = rng.choice(patent.forms)
            header = f"{text} {product}" if text else product
        elif text is not None:
            tokens.append(_key_value_token(el, text) if style.template == "key_value" else text)
    if rng.random() < 0.4:
        rng.shuffle(tokens)
    if patent.fillers and rng.random() < 0.35:
        tokens.insert(rng.randint(0, len(tokens)), rng.choice(patent.fillers))
    if header is None:
        header = rng.choice(patent.forms)
    return _join(style, code, header, tokens), facts
