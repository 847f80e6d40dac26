"""The demo dataset's patents and the rules that label it (docs/formats.md section 1); datagen.demo generates
the records, datagen.render writes their queries.

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
(some 판단불가, no 미대응) -> 애매 (schemas.risk_rules ``all-elements``).

Reasons. Each ``label.matches[]`` carries a ``reason`` written from its rule (``reason_for``): the value
and where it fell (``겔화제 12%, 8~50% 안``; ``pH 5.6, 경계 5.5의 ±5% 이내``), or what the query says of the
element (``극성 오일 없음``, ``경도 미기재``, ``왁스 수치 없음(모호)``), at most 40 characters (v2's maxLength).

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

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable

from patent_risk.schemas.risk_rules import all_elements

MARGIN = Fraction(5, 100)


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
    """The all-elements rule (schemas.risk_rules, `evaluate report --risk-rule all-elements`): all 대응 -> 높음;
    any 미대응 -> 낮음; otherwise 애매."""
    return all_elements(matches)


_UNIT_SUFFIX = {"중량%": "%", "cps": "cps", "g": "g", "pH": "", "SPF": ""}


def _num(x: Fraction) -> str:
    return f"{float(x):,.2f}".rstrip("0").rstrip(".")


def _range_text(el: ElementSpec) -> str:
    u = _UNIT_SUFFIX[el.unit]
    if el.lo is not None and el.hi is not None:
        return f"{_num(el.lo)}~{_num(el.hi)}{u}"
    return f"{_num(el.lo)}{u} 이상" if el.lo is not None else f"{_num(el.hi)}{u} 이하"


def reason_for(el: ElementSpec, fact: dict, rule: str) -> str:
    """The reason written for an element's label (``label.matches[].reason``, what schema v2 trains on): which
    stated value fell where, or what the query says of the element, in at most 40 characters. E.g.
    ``겔화제 12%, 8~50% 안`` (in_range), ``점도 41,000cps, 10,000~40,000cps 밖`` (out_of_range),
    ``pH 5.6, 경계 5.5의 ±5% 이내`` (near_boundary), ``극성 오일 포함`` / ``극성 오일 없음`` (present / absent),
    ``제형 일치`` / ``제형 불일치`` (the emulsion type), ``경도 미기재`` (missing), ``왁스 수치 없음(모호)`` (vague)."""
    if rule in VALUE_RULES:
        value = Fraction(str(fact["value"]))
        u = _UNIT_SUFFIX[el.unit]
        stated = f"{el.role} {_num(value)}{u}"
        if rule == "near_boundary":
            bounds = [b for b in (el.lo, el.hi) if b is not None]
            b = min(bounds, key=lambda b: abs(value - b) / b)
            return f"{stated}, 경계 {_num(b)}{u}의 ±{int(MARGIN * 100)}% 이내"
        return f"{stated}, {_range_text(el)} {'안' if rule == 'in_range' else '밖'}"
    return {
        "ingredient_present": f"{el.role} {'일치' if el.kind == 'form' else '포함'}",
        "ingredient_absent": f"{el.role} {'불일치' if el.kind == 'form' else '없음'}",
        "missing": f"{el.role} 미기재",
        "vague": f"{el.role} 수치 없음(모호)",
    }[rule]


def patent_by_id(patent_id: str) -> PatentSpec:
    return next(p for p in PATENTS if p.patent_id == patent_id)


def judge(el: ElementSpec, fact: dict) -> str:
    """The rule an element's stated fact triggers."""
    state = fact["state"]
    if state == "value":
        return rule_for_value(el, fact["value"])
    return {"present": "ingredient_present", "absent": "ingredient_absent",
            "missing": "missing", "vague": "vague"}[state]
