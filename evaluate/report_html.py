"""The report as one self-contained HTML page: the same blocks as report.md, with inline SVG
confusion-matrix heatmaps and per-class F1 bars. No scripts, fonts, styles or images from anywhere else."""
from __future__ import annotations

from html import escape
from typing import Any

from patent_risk.schemas.labels import INVALID

from .report_doc import Block, Bullets, Figure, Heading, Table, Text

RUN_COLOURS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
FONT = "'Noto Sans KR','Noto Sans CJK KR','Apple SD Gothic Neo','Malgun Gothic',NanumGothic,system-ui,sans-serif"
STYLE = f"""
body {{ font-family: {FONT}; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .9rem; }}
th, td {{ border: 1px solid #ccc; padding: .25rem .55rem; text-align: center; vertical-align: top; }}
th {{ background: #f2f2f2; }}
td.row-label {{ font-weight: 600; text-align: left; background: #fafafa; }}
td {{ max-width: 28rem; overflow-wrap: anywhere; }}
h1, h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .2rem; }}
figure {{ display: inline-block; margin: 0 1.5rem 1rem 0; vertical-align: top; }}
figcaption {{ font-size: .85rem; color: #555; }}
"""


def _text(x: float, y: float, s: str, anchor: str = "middle", size: int = 12, weight: str = "normal", fill: str = "#222") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" font-weight="{weight}" '
            f'fill="{fill}" dominant-baseline="middle">{escape(s)}</text>')


def confusion_svg(matrix: dict[str, dict[str, int]], labels: list[str]) -> str:
    """A heatmap of a confusion matrix: cell shade is the cell's share of its gold column; the diagonal
    in blue (right), other cells in red (wrong), the ``invalid`` row included."""
    rows = [*labels, INVALID]
    cell, left, top = 64, 110, 46
    col_totals = {g: sum(matrix[p][g] for p in rows) for g in labels}
    width, height = left + cell * len(labels) + 10, top + cell * len(rows) + 10
    parts = [f'<svg width="{width}" height="{height}" role="img" font-family="{escape(FONT)}">',
             _text(left + cell * len(labels) / 2, 12, "정답 (gold)", size=12, weight="bold")]
    for j, g in enumerate(labels):
        parts.append(_text(left + cell * j + cell / 2, top - 14, g))
    for i, p in enumerate(rows):
        parts.append(_text(left - 8, top + cell * i + cell / 2, f"예측: {p}", anchor="end"))
        for j, g in enumerate(labels):
            n = matrix[p][g]
            share = n / col_totals[g] if col_totals[g] else 0.0
            rgb = (78, 121, 167) if p == g else (225, 87, 89)
            alpha = 0.08 + 0.92 * share if n else 0.0
            x, y = left + cell * j, top + cell * i
            parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="rgb{rgb}" fill-opacity="{alpha:.3f}" '
                         f'stroke="#ccc"><title>예측 {escape(p)} / 정답 {escape(g)}: {n}</title></rect>')
            parts.append(_text(x + cell / 2, y + cell / 2, str(n), size=13, fill="#fff" if alpha > 0.6 else "#222"))
    parts.append("</svg>")
    return "".join(parts)


def per_class_svg(data: dict[str, Any]) -> str:
    """Grouped horizontal bars: F1 per class, one bar per run (precision and recall in the tooltip)."""
    labels, runs = data["labels"], data["runs"]
    bar, gap, left, width, top = 14, 12, 90, 360, 18
    group = bar * len(runs) + gap
    legend_w = max(130, 7 * max(len(n) for n in runs) + 24)
    per_row = max(1, (left + width) // legend_w)
    legend_top = top + group * len(labels) + 10
    height = legend_top + 18 * ((len(runs) + per_row - 1) // per_row)
    parts = [f'<svg width="{left + width + 60}" height="{height}" role="img" font-family="{escape(FONT)}">']
    for tick in (0, 0.5, 1.0):
        x = left + width * tick
        parts.append(f'<line x1="{x}" y1="{top - 4}" x2="{x}" y2="{top + group * len(labels) - gap}" stroke="#ddd"/>')
        parts.append(_text(x, top - 10, f"{tick:.1f}", size=10, fill="#777"))
    for i, lab in enumerate(labels):
        y0 = top + group * i
        parts.append(_text(left - 8, y0 + bar * len(runs) / 2, lab, anchor="end"))
        for k, (name, classes) in enumerate(runs.items()):
            c = classes[lab]
            f1 = c["f1"] or 0.0
            colour = RUN_COLOURS[k % len(RUN_COLOURS)]
            tip = f"{name} / {lab}: F1 {c['f1']}, precision {c['precision']}, recall {c['recall']}, gold {c['support']}"
            parts.append(f'<rect x="{left}" y="{y0 + bar * k}" width="{width * f1:.1f}" height="{bar - 2}" fill="{colour}">'
                         f'<title>{escape(tip)}</title></rect>')
            parts.append(_text(left + width * f1 + 4, y0 + bar * k + bar / 2 - 1, "—" if c["f1"] is None else f"{f1:.3f}",
                               anchor="start", size=10))
    for k, name in enumerate(runs):
        x = left + (k % per_row) * legend_w
        y = legend_top + 18 * (k // per_row) + 4
        parts.append(f'<rect x="{x}" y="{y - 5}" width="10" height="10" fill="{RUN_COLOURS[k % len(RUN_COLOURS)]}"/>')
        parts.append(_text(x + 14, y, name, anchor="start", size=11))
    parts.append("</svg>")
    return "".join(parts)


def _plot_frame(parts: list[str], left: int, top: int, size: int, x_label: str, y_label: str, y_max: float = 1.0) -> None:
    """Axes of a ``size`` square, x from 0 to 1 and y from 0 to ``y_max``, ticks at both ends and the middle; the
    y label written upwards left of the ticks."""
    parts.append(f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="none" stroke="#bbb"/>')
    for t in (0.0, 0.5, 1.0):
        parts.append(_text(left + size * t, top + size + 12, f"{t:.1f}", size=10, fill="#777"))
        parts.append(_text(left - 6, top + size * (1 - t), f"{t * y_max:.2f}", anchor="end", size=10, fill="#777"))
    parts.append(_text(left + size / 2, top + size + 28, x_label, size=11))
    x, y = left - 42, top + size / 2
    parts.append(f'<g transform="rotate(-90 {x:.1f} {y:.1f})">{_text(x, y, y_label, size=11)}</g>')


def reliability_svg(data: dict[str, Any]) -> str:
    """A reliability diagram: each confidence bin's accuracy against its mean confidence (circle area ~ decisions),
    the diagonal a perfectly calibrated model."""
    left, top, size = 56, 12, 220
    parts = [f'<svg width="{left + size + 20}" height="{top + size + 40}" role="img" font-family="{escape(FONT)}">']
    _plot_frame(parts, left, top, size, "confidence (the written label's probability)", "accuracy")
    parts.append(f'<line x1="{left}" y1="{top + size}" x2="{left + size}" y2="{top}" stroke="#999" stroke-dasharray="4 3"/>')
    n_all = sum(b["n"] for b in data["bins"]) or 1
    for b in data["bins"]:
        if not b["n"]:
            continue
        x, y = left + size * b["confidence"], top + size * (1 - b["accuracy"])
        r = 3 + 9 * (b["n"] / n_all) ** 0.5
        tip = (f"{b['low']:.1f}-{b['high']:.1f}: {b['n']} decisions, mean confidence {b['confidence']:.3f}, "
               f"accuracy {b['accuracy']:.3f}")
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{RUN_COLOURS[0]}" fill-opacity="0.75">'
                     f'<title>{escape(tip)}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def risk_coverage_svg(data: dict[str, Any]) -> str:
    """Error rate of the decisions kept against the share kept (most confident first), one line per run."""
    left, top, size = 56, 12, 220
    runs = data["runs"]
    height = top + size + 40 + 16 * len(runs)
    top_err = max([max(c["error"], default=0.0) for c in runs.values()] + [0.05])
    parts = [f'<svg width="{left + size + 200}" height="{height}" role="img" font-family="{escape(FONT)}">']
    _plot_frame(parts, left, top, size, "coverage (share of decisions kept)", "error of the decisions kept", top_err)
    for k, (name, c) in enumerate(runs.items()):
        colour = RUN_COLOURS[k % len(RUN_COLOURS)]
        pts = " ".join(f"{left + size * x:.1f},{top + size * (1 - e / top_err):.1f}" for x, e in zip(c["coverage"], c["error"]))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        y = top + size + 44 + 16 * k
        parts.append(f'<rect x="{left}" y="{y - 5}" width="10" height="10" fill="{colour}"/>')
        aurc = "—" if c.get("aurc") is None else f"{c['aurc']:.3f}"
        parts.append(_text(left + 14, y, f"{name} (AURC {aurc})", anchor="start", size=11))
    parts.append("</svg>")
    return "".join(parts)


FIGURES = {"reliability": reliability_svg, "risk_coverage": risk_coverage_svg}


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in t.headers)
    body = []
    for row in t.rows:
        cells = [f'<td class="row-label">{escape(c)}</td>' if j == 0 and t.row_headers else f"<td>{escape(c)}</td>"
                 for j, c in enumerate(row)]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _anchor(text: str, seen: dict[str, int]) -> str:
    """A heading's id, to link to a section (report.html#confidence-and-calibration): words joined by hyphens,
    a number added when the same heading comes again."""
    import re

    slug = re.sub(r"[^\w]+", "-", text.lower()).strip("-") or "section"
    seen[slug] = seen.get(slug, 0) + 1
    return slug if seen[slug] == 1 else f"{slug}-{seen[slug]}"


def render_html(blocks: list[Block], title: str = "Evaluation report") -> str:
    """The blocks as a self-contained UTF-8 HTML page."""
    parts = []
    ids: dict[str, int] = {}
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f'<h{b.level} id="{_anchor(b.text, ids)}">{escape(b.text)}</h{b.level}>')
        elif isinstance(b, Text):
            parts.append(f"<p>{escape(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            parts.append(_html_table(b))
        elif isinstance(b, Figure):
            if b.kind in FIGURES:
                svg = FIGURES[b.kind](b.data)
            else:
                svg = confusion_svg(b.data["matrix"], b.data["labels"]) if b.kind == "confusion" else per_class_svg(b.data)
            parts.append(f"<figure>{svg}<figcaption>{escape(b.title)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"ko\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")
