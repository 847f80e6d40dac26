"""A seeded generator of the Korean demo dataset (CONTRACT.md section 1) and its committed split.

Five invented patents on cosmetic formulations (``PATENTS``), each a one-sentence claim split
into 3-6 elements. A record pairs one claim with a short product formulation (``query``); its
label follows from the rules below, applied to what the query states, so every label is exact.

Element kinds
    amount    a named ingredient (or class of ingredients) with a 중량% range
    property  a measured property with a range: 점도 (cps), pH, SPF, 경도 (g)
    presence  a named ingredient (or class) that must be present, no range
    form      the emulsion type (W/O), stated in the product name

What a query states, per element, and the rule it triggers (``RULE_MATCH``)
    in_range            numeric value inside the claimed range, beyond the margin  -> 대응
    ingredient_present  the claimed ingredient, a member of the claimed class,
                        or the claimed emulsion type is named (for a presence
                        element any stated amount is irrelevant)                  -> 대응
    out_of_range        numeric value outside the range, beyond the margin         -> 미대응
    ingredient_absent   the query says the ingredient is absent (무첨가, 불포함,
                        -프리, 0%) or names a different ingredient in its place
                        (e.g. 사이클로펜타실록산 where a volatile hydrocarbon oil is
                        claimed) or the other emulsion type (O/W)                  -> 미대응
    near_boundary       numeric value within the margin of a range boundary        -> 판단불가
    missing             the value is not given (미기재, 미측정, an ingredient named
                        with no amount) or the element is not mentioned at all
                        (only properties and the emulsion type are ever left out;
                        ingredients are always addressed)                         -> 판단불가
    vague               only a word instead of a value (소량, 적정량, 고점도,
                        pH 약산성, SPF 높음, 오일류 적정량)                          -> 판단불가

Margin. For a value v and a range boundary b the relative distance is (v - b) / b for a lower
bound and (b - v) / b for an upper bound: positive inside the range, negative outside. The signed
distance of v to its range is the smaller of the two (one-sided ranges such as "SPF 30 이상"
have one). ``MARGIN`` = 0.05: |distance| <= 0.05 is near_boundary, > 0.05 in_range, < -0.05
out_of_range. Values are judged as printed (after rounding); "약 12%" counts as 12%. Units are
converted first: wt%, w/w% and % are 중량%; cP and mPa·s are cps; 1 Pa·s = 1,000 cps; gf is g.
The generator never prints a value with 0.04 < |distance| < 0.065, so no label hangs on the
third decimal.

risk_level, from all the matches: every element 대응 -> 높음; any 미대응 -> 낮음; otherwise
(some 판단불가, no 미대응) -> 애매.

Every record carries ``meta``: ``split``; ``novel`` (the query uses a template, and possibly
ingredient names or units, that no train record uses) with ``novel_features``; ``template``;
``rules`` (element id -> rule name); ``values`` (element id -> the numeric value in the claim's
unit, for elements judged on a value); ``boundary_distance`` (the *signed* distance, as defined
above, of the value closest to a boundary, i.e. smallest |distance|; null when the query states
no value); ``near_boundary`` (some element is near_boundary).

Case mix. 애매 records mostly hinge on one near-boundary value with every other element clearly
met; some 낮음 records fail on a single value just outside the margin (distance -0.065..-0.15)
and some 높음 records have a value just inside it, so the margin is what separates them.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

DEFAULT_SEED = 20260131
MARGIN = Fraction(5, 100)
BOUNDARY_BAND = 0.15  # generate_boundary_cases: every record has |boundary_distance| <= this

RULE_MATCH: dict[str, str] = {
    "in_range": "대응",
    "ingredient_present": "대응",
    "out_of_range": "미대응",
    "ingredient_absent": "미대응",
    "near_boundary": "판단불가",
    "missing": "판단불가",
    "vague": "판단불가",
}
VALUE_RULES = ("in_range", "out_of_range", "near_boundary")

# Bands of signed distance the generator samples from, per intended case.
_BANDS: dict[str, tuple[Fraction | None, Fraction | None]] = {
    "in": (Fraction(65, 1000), None),
    "in_edge": (Fraction(65, 1000), Fraction(15, 100)),
    "near": (Fraction(-4, 100), Fraction(4, 100)),
    "out_edge": (Fraction(-15, 100), Fraction(-65, 1000)),
    "out": (None, Fraction(-20, 100)),
}

# Split sizes. Eval: 147 records, 643 elements, 30 높음 / 49 애매 / 68 낮음.
EVAL_PER_PATENT = (30, 31, 30, 27, 29)
EVAL_RISK = {"높음": 30, "애매": 49, "낮음": 68}
EVAL_NOVEL = 30
TRAIN_PER_PATENT = 144
TRAIN_RISK_PER_PATENT = {"높음": 40, "애매": 50, "낮음": 54}
MAX_QUERY_CHARS = 120


@dataclass(frozen=True)
class ElementSpec:
    id: str
    text: str
    kind: str  # amount | property | presence | form
    role: str  # short label, used by the key=value template
    lo: Fraction | None = None
    hi: Fraction | None = None
    step: Fraction = Fraction(1)
    unit: str = "중량%"  # canonical unit of lo/hi: 중량% | cps | pH | SPF | g
    names: tuple[str, ...] = ()
    novel_names: tuple[str, ...] = ()
    alternatives: tuple[str, ...] = ()  # other ingredients named in its place -> absent
    absent_phrases: tuple[str, ...] = ()
    vague_phrases: tuple[str, ...] = ()
    missing_phrases: tuple[str, ...] = ()
    omit_when_missing: bool = False
    typical: tuple[Fraction, Fraction, Fraction] | None = None  # presence: (lo, hi, step) of a stated amount

    @property
    def numeric(self) -> bool:
        return self.kind in ("amount", "property")

    @property
    def can_be_absent(self) -> bool:
        return bool(self.alternatives or self.absent_phrases)


@dataclass(frozen=True)
class PatentSpec:
    patent_id: str
    claim: str
    elements: tuple[ElementSpec, ...]
    forms: tuple[str, ...]
    code_prefixes: tuple[str, ...]
    fillers: tuple[str, ...] = ()

    def element(self, element_id: str) -> ElementSpec:
        return next(e for e in self.elements if e.id == element_id)


F = Fraction

_AMOUNT_VAGUE = ("소량", "적정량", "미량", "일정량")
_AMOUNT_MISSING = ("(함량 미기재)", "함유", "포함(함량 비공개)")

PATENTS: tuple[PatentSpec, ...] = (
    PatentSpec(
        patent_id="KR10-2019-0034127",
        claim=(
            "폴리아미드계 겔화제 8 내지 50중량%, 휘발성 탄화수소 오일 20 내지 60중량% 및 극성 오일을 "
            "포함하는 스틱형 화장료 조성물로서, 상기 조성물은 왁스 1 내지 10중량%를 더 포함하고, "
            "경도가 40 내지 150g인 것을 특징으로 하는 화장료 조성물."
        ),
        elements=(
            ElementSpec("E1", "폴리아미드계 겔화제 8 내지 50중량%", "amount", "겔화제", F(8), F(50), F(1, 2),
                        names=("폴리아미드계 겔화제", "폴리아마이드-8", "폴리아마이드-3", "폴리아미드 겔화제"),
                        novel_names=("Polyamide-8", "폴리아미드 수지 겔화제"),
                        alternatives=("덱스트린팔미테이트", "12-하이드록시스테아릭애씨드")),
            ElementSpec("E2", "휘발성 탄화수소 오일 20 내지 60중량%", "amount", "휘발성 오일", F(20), F(60), F(1),
                        names=("이소도데칸", "아이소도데케인", "이소헥사데칸", "휘발성 탄화수소 오일"),
                        novel_names=("Isododecane", "Isohexadecane"),
                        alternatives=("사이클로펜타실록산", "사이클로헥사실록산")),
            ElementSpec("E3", "극성 오일", "presence", "극성 오일",
                        names=("옥틸도데칸올", "다이아이소스테아릴말레이트", "트라이에틸헥사노인", "극성 오일"),
                        novel_names=("Octyldodecanol", "펜타에리스리틸테트라에틸헥사노에이트"),
                        alternatives=("미네랄오일", "스쿠알란"),
                        absent_phrases=("극성 오일 무첨가", "극성 오일 불포함"),
                        vague_phrases=("오일류 적정량", "기타 오일 함유"),
                        missing_phrases=("극성 오일 여부 미기재", "오일상 조성 미기재"),
                        typical=(F(5), F(30), F(1))),
            ElementSpec("E4", "왁스 1 내지 10중량%", "amount", "왁스", F(1), F(10), F(1, 10),
                        names=("칸델릴라왁스", "마이크로크리스탈린왁스", "카나우바왁스", "왁스"),
                        novel_names=("Candelilla Wax", "오조케라이트"),
                        absent_phrases=("왁스 무첨가", "왁스 0%", "왁스 불포함")),
            ElementSpec("E5", "경도 40 내지 150g", "property", "경도", F(40), F(150), F(1), unit="g",
                        vague_phrases=("경도 적당", "단단한 경도", "경도 높음"),
                        missing_phrases=("경도 미측정", "경도 미기재"), omit_when_missing=True),
        ),
        forms=("스틱", "오일 스틱", "밤 스틱"),
        code_prefixes=("A", "ST", "PG"),
        fillers=("토코페롤 0.5%", "향료 0.2%", "BHT 0.05%"),
    ),
    PatentSpec(
        patent_id="KR10-2020-0058213",
        claim=(
            "에틸렌다이아민/하이드로제네이티드다이머다이리놀리에이트코폴리머비스-다이-C14-18알킬아마이드 "
            "9 내지 35중량% 및 에스터 오일 30 내지 80중량%를 포함하는 오일 겔 화장료 조성물로서, "
            "실리카실릴레이트 0.5 내지 5중량%를 더 포함하고, 점도가 5,000 내지 50,000cps인 것을 "
            "특징으로 하는 화장료 조성물."
        ),
        elements=(
            ElementSpec("E1", "에틸렌다이아민/하이드로제네이티드다이머다이리놀리에이트코폴리머비스-다이-C14-18알킬아마이드 "
                              "9 내지 35중량%", "amount", "겔화제", F(9), F(35), F(1, 2),
                        names=("ATPA 겔화제", "ATPA",
                               "에틸렌다이아민/하이드로제네이티드다이머다이리놀리에이트코폴리머비스-다이-C14-18알킬아마이드"),
                        novel_names=("EDA/수첨다이머다이리놀리에이트 코폴리머 아마이드", "ATPA 구조화제"),
                        alternatives=("덱스트린팔미테이트", "스테아랄코늄헥토라이트")),
            ElementSpec("E2", "에스터 오일 30 내지 80중량%", "amount", "에스터 오일", F(30), F(80), F(1),
                        names=("에스터 오일", "트라이에틸헥사노인", "아이소프로필미리스테이트", "세틸에틸헥사노에이트"),
                        novel_names=("C12-15알킬벤조에이트", "Triethylhexanoin"),
                        alternatives=("미네랄오일", "스쿠알란", "이소도데칸")),
            ElementSpec("E3", "실리카실릴레이트 0.5 내지 5중량%", "amount", "분체", F(1, 2), F(5), F(1, 10),
                        names=("실리카실릴레이트", "실리카 실릴레이트"),
                        novel_names=("Silica Silylate", "소수성 실리카 에어로젤"),
                        alternatives=("실리카", "나일론-12")),
            ElementSpec("E4", "점도 5,000 내지 50,000cps", "property", "점도", F(5000), F(50000), F(500), unit="cps",
                        vague_phrases=("점도 높음", "고점도", "점도 중간 수준"),
                        missing_phrases=("점도 미기재", "점도 미측정"), omit_when_missing=True),
        ),
        forms=("오일 겔", "젤 밤", "오일 젤"),
        code_prefixes=("B", "OG", "AT"),
        fillers=("토코페롤 0.3%", "향료 0.1%"),
    ),
    PatentSpec(
        patent_id="KR10-2021-0097456",
        claim=(
            "트라이에톡시카프릴릴실레인으로 표면처리된 이산화티타늄 5 내지 25중량%, 산화아연 1 내지 "
            "20중량% 및 실리콘 오일을 포함하는 자외선 차단용 화장료 조성물로서, 자외선 차단지수(SPF)가 "
            "30 이상인 것을 특징으로 하는 화장료 조성물."
        ),
        elements=(
            ElementSpec("E1", "트라이에톡시카프릴릴실레인으로 표면처리된 이산화티타늄 5 내지 25중량%", "amount", "무기자차",
                        F(5), F(25), F(1, 2),
                        names=("트리에톡시카프릴릴실란 처리 TiO2", "트라이에톡시카프릴릴실레인 처리 이산화티타늄",
                               "트리에톡시카프릴릴실란에 TiO2", "TiO2(트리에톡시카프릴릴실란 코팅)"),
                        novel_names=("Titanium Dioxide(Triethoxycaprylylsilane)", "카프릴릴실란 코팅 티타늄다이옥사이드"),
                        alternatives=("알루미나/스테아릭애씨드 처리 TiO2", "미처리 TiO2", "다이메티콘 처리 TiO2")),
            ElementSpec("E2", "산화아연 1 내지 20중량%", "amount", "산화아연", F(1), F(20), F(1, 2),
                        names=("산화아연", "징크옥사이드", "ZnO"),
                        novel_names=("Zinc Oxide",),
                        absent_phrases=("산화아연 무첨가", "ZnO 0%", "징크옥사이드 불포함")),
            ElementSpec("E3", "실리콘 오일", "presence", "실리콘 오일",
                        names=("사이클로펜타실록산", "다이메티콘", "실리콘 오일", "카프릴릴메티콘"),
                        novel_names=("Dimethicone", "페닐트라이메티콘"),
                        alternatives=("이소도데칸", "미네랄오일"),
                        absent_phrases=("실리콘 프리", "실리콘 오일 무첨가"),
                        vague_phrases=("오일 적정량", "에몰리언트 함유"),
                        missing_phrases=("오일상 미기재", "오일 성분 미기재"),
                        typical=(F(5), F(30), F(1))),
            ElementSpec("E4", "자외선 차단지수(SPF) 30 이상", "property", "SPF", F(30), None, F(1), unit="SPF",
                        vague_phrases=("SPF 고지수", "SPF 높음", "자외선 차단 효과 우수"),
                        missing_phrases=("SPF 미측정", "SPF 미기재"), omit_when_missing=True),
        ),
        forms=("선크림", "선스틱", "톤업 선크림", "선밀크"),
        code_prefixes=("C", "UV", "SN"),
        fillers=("정제수 잔량", "글리세린 5%", "페녹시에탄올 0.5%"),
    ),
    PatentSpec(
        patent_id="KR10-2018-0071532",
        claim=(
            "유상 20 내지 50중량%, 폴리글리세릴-2다이폴리하이드록시스테아레이트 1 내지 5중량% 및 "
            "염화나트륨을 포함하는 유중수형(W/O) 에멀젼 화장료 조성물로서, 상기 조성물의 점도가 "
            "10,000 내지 40,000cps이고, pH가 5.5 내지 7.0인 것을 특징으로 하는 화장료 조성물."
        ),
        elements=(
            ElementSpec("E1", "유중수형(W/O) 에멀젼", "form", "제형",
                        names=("W/O", "유중수형", "W/O형"),
                        novel_names=("water-in-oil",),
                        alternatives=("O/W", "수중유형", "O/W형")),
            ElementSpec("E2", "유상 20 내지 50중량%", "amount", "유상", F(20), F(50), F(1),
                        names=("유상", "오일상", "유상 성분"),
                        novel_names=("oil phase",)),
            ElementSpec("E3", "폴리글리세릴-2다이폴리하이드록시스테아레이트 1 내지 5중량%", "amount", "유화제",
                        F(1), F(5), F(1, 10),
                        names=("폴리글리세릴-2다이폴리하이드록시스테아레이트", "폴리글리세릴-2 다이폴리하이드록시스테아레이트"),
                        novel_names=("Polyglyceryl-2 Dipolyhydroxystearate",),
                        alternatives=("PEG-10 다이메티콘", "세틸 PEG/PPG-10/1 다이메티콘", "소르비탄세스퀴올리에이트")),
            ElementSpec("E4", "염화나트륨", "presence", "전해질",
                        names=("염화나트륨", "소듐클로라이드", "NaCl"),
                        novel_names=("Sodium Chloride",),
                        alternatives=("황산마그네슘", "마그네슘설페이트"),
                        absent_phrases=("염화나트륨 무첨가", "전해질 무첨가"),
                        vague_phrases=("전해질 소량", "염류 적정량"),
                        missing_phrases=("전해질 미기재",),
                        typical=(F(3, 10), F(2), F(1, 10))),
            ElementSpec("E5", "점도 10,000 내지 40,000cps", "property", "점도", F(10000), F(40000), F(500), unit="cps",
                        vague_phrases=("점도 높음", "고점도", "점도 중간 수준"),
                        missing_phrases=("점도 미기재", "점도 미측정"), omit_when_missing=True),
            ElementSpec("E6", "pH 5.5 내지 7.0", "property", "pH", F(11, 2), F(7), F(1, 10), unit="pH",
                        vague_phrases=("pH 약산성", "pH 중성 부근"),
                        missing_phrases=("pH 미측정", "pH 미기재"), omit_when_missing=True),
        ),
        forms=("크림", "파운데이션", "BB크림", "로션"),
        code_prefixes=("D", "EM", "WO"),
        fillers=("정제수 잔량", "글리세린 5%", "부틸렌글라이콜 3%", "페녹시에탄올 0.5%"),
    ),
    PatentSpec(
        patent_id="KR10-2022-0015873",
        claim=(
            "왁스 8 내지 25중량% 및 비휘발성 오일 40 내지 75중량%를 포함하는 립 화장료 조성물로서, "
            "색소를 0.5 내지 10중량%로 더 포함하는 것을 특징으로 하는 화장료 조성물."
        ),
        elements=(
            ElementSpec("E1", "왁스 8 내지 25중량%", "amount", "왁스", F(8), F(25), F(1, 2),
                        names=("칸델릴라왁스", "카나우바왁스", "세레신", "폴리에틸렌왁스", "왁스"),
                        novel_names=("Candelilla Wax", "오조케라이트"),
                        absent_phrases=("왁스 무첨가", "왁스 0%")),
            ElementSpec("E2", "비휘발성 오일 40 내지 75중량%", "amount", "오일", F(40), F(75), F(1),
                        names=("피마자유", "다이아이소스테아릴말레이트", "폴리부텐", "비휘발성 오일"),
                        novel_names=("Castor Oil", "하이드로제네이티드폴리아이소부텐"),
                        alternatives=("이소도데칸", "사이클로펜타실록산")),
            ElementSpec("E3", "색소 0.5 내지 10중량%", "amount", "색소", F(1, 2), F(10), F(1, 10),
                        names=("적색202호", "산화철", "색소", "황색4호 레이크"),
                        novel_names=("CI 15850", "레드 7 레이크"),
                        absent_phrases=("색소 무첨가", "무색(색소 0%)")),
        ),
        forms=("립스틱", "립밤", "틴티드 립밤"),
        code_prefixes=("E", "LP", "LS"),
        fillers=("토코페롤 0.5%", "향료 0.1%", "멘톨 0.05%"),
    ),
)

# Query templates. Shared ones appear in train and eval; novel ones only in eval (meta.novel).
SHARED_TEMPLATES = ("colon_list", "dash_slash", "bracket_semicolon", "formula_sentence", "compact_plus")
NOVEL_TEMPLATES = ("value_first", "key_value", "english_header", "narrative")
_AMOUNT_UNITS = ("중량%", "wt%", "%", " 중량%", " wt%")
_NOVEL_AMOUNT_UNITS = (" w/w%", "%(w/w)")


# ---------------------------------------------------------------- rules

def signed_distance(value: Fraction, lo: Fraction | None, hi: Fraction | None) -> Fraction:
    """Relative distance of value to its range: positive inside, negative outside (see module doc)."""
    parts = []
    if lo is not None:
        parts.append((value - lo) / lo)
    if hi is not None:
        parts.append((hi - value) / hi)
    return min(parts)


def rule_for_value(element: ElementSpec, value: Fraction | float | str) -> str:
    """The rule a stated numeric value (in the claim's unit) triggers for a range element."""
    s = signed_distance(Fraction(str(value)), element.lo, element.hi)
    if abs(s) <= MARGIN:
        return "near_boundary"
    return "in_range" if s > 0 else "out_of_range"


def risk_from_matches(matches: Iterable[str]) -> str:
    """The all-elements rule: all 대응 -> 높음; any 미대응 -> 낮음; otherwise 애매."""
    matches = list(matches)
    if "미대응" in matches:
        return "낮음"
    if all(m == "대응" for m in matches):
        return "높음"
    return "애매"


def patent_by_id(patent_id: str) -> PatentSpec:
    return next(p for p in PATENTS if p.patent_id == patent_id)


# ---------------------------------------------------------------- rendering

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


def judge(el: ElementSpec, fact: dict) -> str:
    """The rule an element's stated fact triggers."""
    state = fact["state"]
    if state == "value":
        return rule_for_value(el, fact["value"])
    return {"present": "ingredient_present", "absent": "ingredient_absent",
            "missing": "missing", "vague": "vague"}[state]


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


# ---------------------------------------------------------------- planning

_POSITIVE = {"amount": "in", "property": "in", "presence": "present", "form": "present"}


def _unknown_cases(el: ElementSpec) -> list[str]:
    if el.kind == "form":
        return ["missing"]
    if el.numeric:
        return ["near", "missing", "vague"]
    return ["missing", "vague"]


def _negative_case(rng: random.Random, el: ElementSpec) -> str:
    if not el.numeric:
        return "absent"
    r = rng.random()
    if el.kind == "amount" and el.can_be_absent and r < 0.25:
        return "absent"
    return "out_edge" if rng.random() < 0.5 else "out"


def _plan(rng: random.Random, patent: PatentSpec, risk: str) -> dict[str, str]:
    """Intended case per element for a target risk level."""
    els = list(patent.elements)
    cases = {e.id: _POSITIVE[e.kind] for e in els}
    for e in els:
        if e.numeric and rng.random() < 0.2:
            cases[e.id] = "in_edge"
    if risk == "높음":
        return cases
    order = els[:]
    rng.shuffle(order)
    if risk == "애매":
        k = rng.choices((1, 2, 3), weights=(65, 25, 10))[0]
        numeric = [e for e in order if e.numeric]
        if numeric and rng.random() < 0.8:
            first = numeric[0]
            cases[first.id] = "near"
        else:
            first = order[0]
            cases[first.id] = rng.choice(_unknown_cases(first))
        rest = [e for e in order if e.id != first.id]
        for e in rest[: k - 1]:
            cases[e.id] = rng.choice(_unknown_cases(e))
        return cases
    # 낮음
    if rng.random() < 0.25:  # fails on one value just outside the margin, everything else met
        cases[rng.choice([e for e in order if e.numeric]).id] = "out_edge"
        return cases
    k = min(rng.choices((1, 2, 3), weights=(38, 40, 22))[0], len(els))
    for e in order[:k]:
        cases[e.id] = _negative_case(rng, e)
    rest = order[k:]
    n_unknown = rng.choices((0, 1, 2), weights=(45, 42, 13))[0]
    for e in rest[:n_unknown]:
        cases[e.id] = rng.choice(_unknown_cases(e))
    return cases



# ---------------------------------------------------------------- records

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


def _make_record(rng: random.Random, patent: PatentSpec, cases: dict[str, str], *, record_id: str,
                 split: str, template: str, novel: bool, exclude: set[str],
                 extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    for attempt in range(200):
        style = _Style(template, novel, [f"template:{template}"] if novel else [])
        code = f"{rng.choice(patent.code_prefixes)}-{rng.randint(1, 999)}"
        query, facts = _render_query(rng, patent, cases, style, code)
        if query in exclude or style.total_weight > 100 or (len(query) > MAX_QUERY_CHARS and attempt < 100):
            continue
        break
    else:  # pragma: no cover - the plans always leave room for a fresh query under 100%
        raise RuntimeError(f"{record_id}: could not render a fresh query whose amounts sum to 100% or less")
    exclude.add(query)
    rules = {el.id: judge(el, facts[el.id]) for el in patent.elements}
    matches = [{"element_id": eid, "match": RULE_MATCH[rule]} for eid, rule in rules.items()]
    values = {eid: float(f["value"]) for eid, f in facts.items() if f["state"] == "value"}
    distances = [signed_distance(facts[eid]["value"], patent.element(eid).lo, patent.element(eid).hi)
                 for eid in values]
    closest = min(distances, key=abs) if distances else None
    meta: dict[str, Any] = {
        "split": split,
        "novel": novel,
        "novel_features": sorted(set(style.features)),
        "template": template,
        "rules": rules,
        "values": values,
        "boundary_distance": None if closest is None else round(float(closest), 4),
        "near_boundary": any(r == "near_boundary" for r in rules.values()),
    }
    if extra_meta:
        meta.update(extra_meta)
    return {
        "id": record_id,
        "patent_id": patent.patent_id,
        "claim": patent.claim,
        "elements": [{"id": el.id, "text": el.text} for el in patent.elements],
        "query": query,
        "label": {"risk_level": risk_from_matches(m["match"] for m in matches), "matches": matches},
        "meta": meta,
    }


def _build(rng: random.Random, slots: list[tuple[PatentSpec, str]], *, split: str, id_format: str,
           novel_indices: set[int], exclude: set[str]) -> list[dict[str, Any]]:
    records = []
    for i, (patent, risk) in enumerate(slots):
        novel = i in novel_indices
        template = rng.choice(NOVEL_TEMPLATES if novel else SHARED_TEMPLATES)
        cases = _plan(rng, patent, risk)
        rec = _make_record(rng, patent, cases, record_id=id_format.format(i + 1), split=split,
                           template=template, novel=novel, exclude=exclude)
        assert rec["label"]["risk_level"] == risk, (rec["id"], cases)
        records.append(rec)
    return records


def generate(seed: int = DEFAULT_SEED) -> dict[str, list[dict]]:
    """The demo split: ``{"train": [...], "eval": [...]}``, the same for the same seed."""
    train_rng = random.Random(f"{seed}:train")
    train_slots = [(p, risk) for p in PATENTS for risk, n in TRAIN_RISK_PER_PATENT.items() for _ in range(n)]
    train_rng.shuffle(train_slots)
    seen: set[str] = set()
    train = _build(train_rng, train_slots, split="train", id_format="train-{:04d}", novel_indices=set(),
                   exclude=seen)

    eval_rng = random.Random(f"{seed}:eval")
    risks = [risk for risk, n in EVAL_RISK.items() for _ in range(n)]
    eval_rng.shuffle(risks)
    eval_patents = [p for p, n in zip(PATENTS, EVAL_PER_PATENT) for _ in range(n)]
    eval_slots = list(zip(eval_patents, risks))
    eval_rng.shuffle(eval_slots)
    novel = set(eval_rng.sample(range(len(eval_slots)), EVAL_NOVEL))
    evaluation = _build(eval_rng, eval_slots, split="eval", id_format="eval-{:03d}", novel_indices=novel,
                        exclude=seen)
    return {"train": train, "eval": evaluation}


def dumps_jsonl(records: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)


def write_split(out_dir: str | Path, seed: int = DEFAULT_SEED) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``eval.jsonl`` under out_dir; return their paths by split."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, records in generate(seed).items():
        path = out / f"{split}.jsonl"
        path.write_bytes(dumps_jsonl(records).encode("utf-8"))
        paths[split] = path
    return paths


def generate_boundary_cases(n: int, seed: int, patents: Sequence[str | PatentSpec] | None = None,
                            exclude_queries: Iterable[str] | None = None) -> list[dict]:
    """n extra training records, each with a value close to a range boundary.

    Every record has |meta.boundary_distance| <= BOUNDARY_BAND: 60% are 애매 on one value within
    the margin, 20% 낮음 on one value just outside it, 20% 높음 with one value just inside it; all
    other elements are clearly met. Labels come from the same rules as the split. Ids are
    ``aug-{seed}-{i:05d}``, which the split's ``train-``/``eval-`` ids cannot take, and no query
    repeats one of exclude_queries (default: every query of the default-seed split).
    """
    chosen = [patent_by_id(p) if isinstance(p, str) else p for p in (patents or PATENTS)]
    if not chosen:
        raise ValueError("patents: give at least one patent")
    if exclude_queries is None:
        split = generate(DEFAULT_SEED)
        exclude = {r["query"] for records in split.values() for r in records}
    else:
        exclude = set(exclude_queries)
    rng = random.Random(f"{seed}:boundary")
    records = []
    for i in range(n):
        patent = chosen[i % len(chosen)]
        mode = rng.choices(("near", "out_edge", "in_edge"), weights=(60, 20, 20))[0]
        cases = {e.id: _POSITIVE[e.kind] for e in patent.elements}
        target = rng.choice([e for e in patent.elements if e.numeric])
        cases[target.id] = mode
        records.append(_make_record(
            rng, patent, cases, record_id=f"aug-{seed}-{i + 1:05d}", split="train",
            template=rng.choice(SHARED_TEMPLATES), novel=False, exclude=exclude,
            extra_meta={"augmented": True, "boundary_element": target.id}))
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.demo_data",
                                     description="Write the demo split (train.jsonl, eval.jsonl) to OUT_DIR.")
    parser.add_argument("out_dir", help="folder to write train.jsonl and eval.jsonl into")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    args = parser.parse_args(argv)
    for split, path in write_split(args.out_dir, args.seed).items():
        n = path.read_bytes().count(b"\n")
        print(f"{split}: {n} records -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
