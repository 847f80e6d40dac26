"""Run directories in, metrics.json / report.md / report.html out (CONTRACT.md sections 3 and 4)."""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from patent_risk.evaluate.report import build_report, write_report
from patent_risk.evaluate.rundir import RESULTS, read_run, repair_torn_tail
from patent_risk.schemas.errors import DataError, UserError
from patent_risk.schemas.labels import INVALID
from patent_risk.schemas.output import load_schema, schema_hash

from .conftest import check_contract
from .runs import output_text, write_run

# SEED_REPORT.md: rows are predictions, columns gold, in the order 높음 애매 낮음 / 대응 판단불가 미대응.
SEED_RISK = {"높음": {"높음": 29, "애매": 1, "낮음": 0}, "애매": {"높음": 0, "애매": 42, "낮음": 1},
             "낮음": {"높음": 0, "애매": 6, "낮음": 64}}
SEED_MATCH = {"대응": {"대응": 380, "판단불가": 1, "미대응": 1}, "판단불가": {"대응": 6, "판단불가": 113, "미대응": 13},
              "미대응": {"대응": 1, "판단불가": 2, "미대응": 116}}
# the 4 invalid outputs: their gold risk and the gold of their 10 elements
INVALID_RISK_GOLD = ["높음", "낮음", "낮음", "낮음"]
INVALID_MATCH_GOLD = [["대응", "대응", "판단불가"], ["미대응", "대응", "판단불가"], ["대응", "미대응"], ["판단불가", "미대응"]]
INVALID_OUTPUTS = ['{"risk_level": "낮음", "matches": [{"element_id": "E1", "ma',  # truncated
                   "```json\n{risk_level: 높음}\n```",  # not JSON
                   '{"risk_level": "중간", "matches": []}',  # label not in the schema
                   '{"risk_level": "낮음"}']  # matches missing


def cells(matrix: dict) -> list[tuple[str, str]]:
    return [(p, g) for p, row in matrix.items() for g, n in row.items() for _ in range(n)]


def seed_rows() -> list[dict]:
    """147 result rows whose outputs reproduce the seed report's two confusion matrices."""
    risk_pairs = cells(SEED_RISK)  # 143 (predicted, gold)
    match_pairs = cells(SEED_MATCH)  # 633
    sizes = [5] * 61 + [4] * 82  # 633 elements over the 143 valid outputs
    assert len(risk_pairs) == len(sizes) == 143 and len(match_pairs) == sum(sizes) == 633
    rows, at = [], 0
    for i, ((pred_risk, gold_risk), k) in enumerate(zip(risk_pairs, sizes)):
        pairs = match_pairs[at:at + k]
        at += k
        ids = [f"E{j + 1}" for j in range(k)]
        text = output_text(pred_risk, [(e, p) for e, (p, _) in zip(ids, pairs)], "fenced" if i % 10 == 0 else "compact")
        rows.append(row(f"{i + 1}", gold_risk, [(e, g) for e, (_, g) in zip(ids, pairs)], text, patent=f"P{i % 5 + 1}"))
    for j, (risk, matches, text) in enumerate(zip(INVALID_RISK_GOLD, INVALID_MATCH_GOLD, INVALID_OUTPUTS)):
        ids = [f"E{n + 1}" for n in range(len(matches))]
        rows.append(row(f"{144 + j}", risk, list(zip(ids, matches)), text, finish="length" if j == 0 else "stop", patent="P5"))
    return rows


def row(rid: str, risk: str | None, matches: list[tuple[str, str]], text: str, finish: str = "stop",
        patent: str = "P1", **extra) -> dict:
    gold = None if risk is None else {"risk_level": risk, "matches": [{"element_id": e, "match": m} for e, m in matches]}
    return {"id": rid, "patent_id": patent, "query": f"폴리아미드계 겔화제 {rid}중량% 함유 조성물",
            "elements": [{"id": e, "text": f"구성요소 {e}"} for e, _ in matches], "gold": gold,
            "raw_output": text, "finish_reason": finish, **extra}


def info(constrained: bool, schema: str = "v1") -> dict:
    return {"format_version": 1, "schema": {"name": schema, "hash": schema_hash(load_schema(schema))},
            "constrained": constrained, "backend": "outlines" if constrained else None,
            "base_model": {"name": "google/gemma-3-4b-it"}, "adapter": {"name": "patent", "path": "a", "hash": "abcdef0123456789"},
            "dataset": {"path": "eval.jsonl", "hash": "0123456789abcdef"}, "engine": {"name": "vllm", "version": "0.32.0"}}


def simple(rid: str, risk: str, pred: str | None, patent: str = "P1", **extra) -> dict:
    """A one-element sample whose output predicts ``pred`` for risk and 대응 for E1 (None: invalid output)."""
    text = "not json" if pred is None else output_text(pred, [("E1", "대응")])
    return row(rid, risk, [("E1", "대응")], text, patent=patent, **extra)


@pytest.fixture(scope="module")
def seed_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed")
    run = write_run(root / "seed-run", seed_rows(), info(False))
    return write_report([run], root / "out")


# --- the seed report, reproduced --------------------------------------------------------------

def test_seed_headline(seed_report):
    r = seed_report.metrics["runs"]["seed-run"]
    assert r["n"] == 147
    assert r["json_valid"]["count"] == 143 and r["json_valid"]["total"] == 147 and r["json_valid"]["rate"] == 0.9728
    assert (r["risk_accuracy"]["count"], r["risk_accuracy"]["total"], r["risk_accuracy"]["rate"]) == (135, 147, 0.9184)
    assert (r["match_accuracy"]["count"], r["match_accuracy"]["total"], r["match_accuracy"]["rate"]) == (609, 643, 0.9471)
    assert (r["parse_failures"], r["schema_failures"], r["finish_length"]) == (2, 2, 1)
    assert r["risk_accuracy"]["ci95"][0] < 0.9184 < r["risk_accuracy"]["ci95"][1]
    assert r["match_accuracy"]["ci95"][0] < 0.9471 < r["match_accuracy"]["ci95"][1]


def test_seed_matrices_are_the_seeds_plus_invalid_row(seed_report):
    r = seed_report.metrics["runs"]["seed-run"]
    assert {k: v for k, v in r["risk_confusion"].items() if k != INVALID} == SEED_RISK
    assert {k: v for k, v in r["match_confusion"].items() if k != INVALID} == SEED_MATCH
    assert r["risk_confusion"][INVALID] == {"높음": 1, "애매": 0, "낮음": 3}
    assert r["match_confusion"][INVALID] == {"대응": 4, "판단불가": 3, "미대응": 3}
    assert sum(v for row_ in r["match_confusion"].values() for v in row_.values()) == 643
    assert r["missing_elements"] == 0


def test_seed_error_pattern_comes_out_of_the_tool(seed_report):
    patterns = seed_report.metrics["runs"]["seed-run"]["error_patterns"]
    top = patterns[0]
    assert (top["gold_risk"], top["pred_risk"], top["count"]) == ("애매", "낮음", 6)
    assert top["share"] == round(6 / 12, 4) and len(top["example_ids"]) == 5
    assert top["share_of_valid"] == 0.75  # the seed's "6 of the 8 errors among valid outputs"
    assert all(p["share_of_valid"] is None for p in patterns if p["pred_risk"] == INVALID)
    assert sum(p["count"] for p in patterns) == 12
    assert [p["count"] for p in patterns] == sorted((p["count"] for p in patterns), reverse=True)


def test_seed_report_files(seed_report):
    md = seed_report.markdown_path.read_text(encoding="utf-8")
    assert "| **예측: 높음** | 29 | 1 | 0 |" in md
    assert "| **예측: invalid** | 1 | 0 | 3 |" in md
    assert "|  | 정답: 높음 | 정답: 애매 | 정답: 낮음 |" in md
    assert "| 애매 → 낮음 | 6 | 50.0% | 75.0% |" in md
    assert "majority-class baseline" in seed_report.summary_markdown
    assert "seed-run (v1 #" in seed_report.summary_markdown
    assert json.loads(seed_report.metrics_path.read_text(encoding="utf-8")) == seed_report.metrics
    mb = seed_report.metrics["runs"]["seed-run"]["majority_baseline"]
    assert (mb["risk"]["label"], mb["risk"]["count"], mb["risk"]["total"]) == ("낮음", 68, 147)
    assert (mb["match"]["label"], mb["match"]["total"]) == ("대응", 643)


def test_check_contract_accepts_metrics(seed_report):
    done = check_contract("metrics", seed_report.metrics_path)
    assert done.returncode == 0, done.stdout + done.stderr
    done = check_contract("run", seed_report.metrics["run_list"][0]["path"])
    assert done.returncode == 0, done.stdout + done.stderr


def test_html_is_self_contained(seed_report):
    html = seed_report.html_path.read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in html and "예측: 높음" in html
    assert not re.search(r"<script|<link|<img|@import|url\(|https?://", html)
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    assert len(svgs) == 4  # two confusion heatmaps, two per-class bar charts
    for svg in svgs:
        ET.fromstring(svg)  # well-formed


# --- reading run directories ------------------------------------------------------------------

def test_torn_last_line_is_a_warning_and_repaired(tmp_path):
    run = write_run(tmp_path / "r", [simple("a", "높음", "높음"), simple("b", "낮음", "낮음")])
    with open(run / RESULTS, "a", encoding="utf-8") as f:
        f.write('{"id": "c", "gold": {"risk_level": "높')
    read = read_run(run)
    assert [r["id"] for r in read.rows] == ["a", "b"]
    assert len(read.warnings) == 1 and "results.jsonl:3: torn last line" in read.warnings[0]
    report = build_report([run])
    assert report.metrics["runs"]["r"]["n"] == 2 and any("torn" in w for w in report.warnings)
    assert repair_torn_tail(run) is True
    assert (run / RESULTS).read_bytes().endswith(b"\n") and read_run(run).warnings == []
    assert repair_torn_tail(run) is False


def test_complete_last_line_without_newline_is_kept_and_gets_one(tmp_path):
    run = write_run(tmp_path / "r", [simple("a", "높음", "높음")])
    with open(run / RESULTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(simple("b", "낮음", "낮음"), ensure_ascii=False))
    assert [r["id"] for r in read_run(run).rows] == ["a", "b"] and read_run(run).warnings == []
    assert repair_torn_tail(run) is True
    assert len(read_run(run).rows) == 2 and (run / RESULTS).read_bytes().endswith(b"\n")


def test_bad_line_in_the_middle_is_an_error(tmp_path):
    run = write_run(tmp_path / "r", [simple("a", "높음", "높음")])
    with open(run / RESULTS, "a", encoding="utf-8") as f:
        f.write("{broken\n" + json.dumps(simple("b", "낮음", "낮음")) + "\n")
    with pytest.raises(DataError) as e:
        read_run(run)
    assert re.search(r"results\.jsonl:2: line: not valid JSON", str(e.value))


def test_duplicate_ids_one_clear_message(tmp_path):
    run = write_run(tmp_path / "r", [simple("a", "높음", "높음"), simple("a", "낮음", "낮음")])
    with pytest.raises(DataError) as e:
        build_report([run])
    assert len(e.value.problems) == 1
    assert re.search(r"results\.jsonl:2: id: duplicate id 'a' \(first on line 1\)", str(e.value))


def test_missing_gold_one_clear_message(tmp_path):
    bad = simple("b", "낮음", "낮음")
    del bad["gold"]
    run = write_run(tmp_path / "r", [simple("a", "높음", "높음"), bad])
    with pytest.raises(DataError) as e:
        build_report([run])
    assert [str(p) for p in e.value.problems] == [f"{run / RESULTS}:2: gold: missing (required in every row)"]


def test_bad_gold_label_is_named(tmp_path):
    bad = simple("a", "높음", "높음")
    bad["gold"]["risk_level"] = "중간"
    with pytest.raises(DataError, match=r"results\.jsonl:1: gold\.risk_level: '중간' is not allowed"):
        read_run(write_run(tmp_path / "r", [bad]))


def test_unknown_schema_one_clear_message(tmp_path):
    run = write_run(tmp_path / "r", [simple("a", "높음", "높음")], {**info(True), "schema": {"name": "v9", "hash": "x"}})
    with pytest.raises(UserError) as e:
        build_report([run])
    assert str(e.value) == f"{run / 'run.json'}: schema.name: unknown schema 'v9'; known schemas: v1, v2, v3"


def test_not_a_run_directory(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        build_report([tmp_path])


def test_problems_of_all_runs_listed_at_once(tmp_path):
    a = write_run(tmp_path / "a", [simple("x", "높음", "높음"), simple("x", "높음", "높음")])
    b = write_run(tmp_path / "b", [{"id": "y", "gold": None, "raw_output": 3, "finish_reason": "stop"}])
    with pytest.raises(DataError) as e:
        build_report([a, b])
    assert len(e.value.problems) == 2 and "raw_output: expected a string" in str(e.value)


# --- comparisons, slices, schemas --------------------------------------------------------------

def test_comparison_on_the_same_samples(tmp_path):
    golds = ["높음", "애매", "낮음"] * 10
    ref_rows = [simple(f"s{i}", g, g if i % 6 else None) for i, g in enumerate(golds)]  # 5 invalid
    run_rows = [simple(f"s{i}", g, g if i % 10 != 3 else "높음") for i, g in enumerate(golds)]  # 3 wrong
    ref = write_run(tmp_path / "unconstrained", ref_rows, info(False))
    run = write_run(tmp_path / "constrained", run_rows, info(True))
    report = write_report([ref, run], tmp_path / "out", bootstrap=500, seed=3)
    (c,) = report.metrics["comparisons"]
    assert (c["reference"], c["run"]) == ("unconstrained", "constrained")
    assert c["samples"] == {"reference": 30, "run": 30, "common": 30, "compared": 30, "same_samples": True, "gold_differs": 0}
    assert c["note"] is None
    assert c["json_valid"]["reference"]["count"] == 25 and c["json_valid"]["run"]["count"] == 30
    assert c["json_valid"]["mcnemar"] == {"b": 0, "c": 5, "p_value": 0.0625}
    mc = c["risk_accuracy"]["mcnemar"]
    right_ref = {i for i in range(30) if i % 6}
    right_run = {i for i in range(30) if i % 10 != 3 or golds[i] == "높음"}
    assert (mc["b"], mc["c"]) == (len(right_ref - right_run), len(right_run - right_ref))
    diff = c["risk_accuracy"]["difference"]
    assert diff == round((len(right_run) - len(right_ref)) / 30, 4)
    low, high = c["risk_accuracy"]["ci95"]
    assert low <= diff <= high
    assert len(c["flipped"]) == mc["b"] + mc["c"]
    assert {f["direction"] for f in c["flipped"]} <= {"fixed", "broken"}
    again = build_report([ref, run], bootstrap=500, seed=3)
    assert again.metrics["comparisons"] == report.metrics["comparisons"]
    md = report.markdown
    assert "McNemar exact p = " in md and "constrained vs unconstrained" in md
    done = check_contract("metrics", report.metrics_path)
    assert done.returncode == 0, done.stdout


def test_comparison_on_different_sample_sets_uses_the_intersection(tmp_path):
    a = write_run(tmp_path / "a", [simple(f"s{i}", "높음", "높음") for i in range(10)])
    b = write_run(tmp_path / "b", [simple(f"s{i}", "높음", "낮음" if i == 7 else "높음") for i in range(5, 14)])
    report = build_report([a, b], bootstrap=200)
    (c,) = report.metrics["comparisons"]
    assert c["samples"]["reference"] == 10 and c["samples"]["run"] == 9 and c["samples"]["common"] == 5
    assert c["samples"]["same_samples"] is False
    assert "different samples" in c["note"] and "compared on the 5 samples both have" in c["note"]
    assert c["risk_accuracy"]["reference"]["total"] == 5 and c["risk_accuracy"]["mcnemar"] == {"b": 1, "c": 0, "p_value": 1.0}
    assert any("compared on the 5 samples" in w for w in report.warnings)
    assert "compared on the 5 samples both have" in report.markdown


def test_comparison_leaves_out_samples_whose_gold_differs(tmp_path):
    a = write_run(tmp_path / "a", [simple("s1", "높음", "높음"), simple("s2", "낮음", "낮음")])
    b = write_run(tmp_path / "b", [simple("s1", "높음", "높음"), simple("s2", "애매", "낮음")])
    (c,) = build_report([a, b], bootstrap=100).metrics["comparisons"]
    assert c["samples"]["gold_differs"] == 1 and c["samples"]["compared"] == 1 and "different gold" in c["note"]


def test_baseline_and_run_names(tmp_path):
    dirs = [write_run(tmp_path / "x" / "run", [simple("s", "높음", "높음")]),
            write_run(tmp_path / "y" / "run", [simple("s", "높음", "낮음")]),
            write_run(tmp_path / "z", [simple("s", "높음", None)])]
    report = build_report(dirs, baseline="z", bootstrap=50)
    assert list(report.metrics["runs"]) == ["x/run", "y/run", "z"]
    assert report.metrics["reference"] == "z" and [c["run"] for c in report.metrics["comparisons"]] == ["x/run", "y/run"]
    with pytest.raises(UserError, match="--baseline 'w' is not one of the runs; runs: x/run, y/run, z"):
        build_report(dirs, baseline="w")
    with pytest.raises(UserError, match="given twice"):
        build_report([dirs[2], dirs[2]])


def test_slices_by_meta_and_patent(tmp_path):
    rows = [simple("a", "애매", "낮음", patent="P1", meta={"boundary": {"distance": 0}}),
            simple("b", "애매", "애매", patent="P1", meta={"boundary": {"distance": 0}}),
            simple("c", "낮음", "낮음", patent="P2", meta={"boundary": {"distance": 3}}),
            simple("d", "높음", None, patent="P2")]
    run = write_run(tmp_path / "r", rows)
    report = write_report([run], tmp_path / "out", by=["meta.boundary.distance", "patent_id"], bootstrap=0)
    r = report.metrics["runs"]["r"]
    sl = r["slices"]["meta.boundary.distance"]
    assert set(sl) == {"0", "3", "(none)"}
    assert sl["0"]["n"] == 2 and sl["0"]["risk_accuracy"] == {"count": 1, "total": 2, "rate": 0.5}
    assert sl["0"]["risk_confusion"]["낮음"]["애매"] == 1 and sl["(none)"]["risk_confusion"][INVALID]["높음"] == 1
    assert sl["(none)"]["json_valid"]["count"] == 0
    assert sum(v for row_ in sl["3"]["match_confusion"].values() for v in row_.values()) == sl["3"]["match_accuracy"]["total"]
    assert r["slices"]["patent_id"]["P2"]["n"] == 2 and r["per_patent"]["P1"]["risk_accuracy"]["count"] == 1
    assert "## Slices by meta.boundary.distance" in report.markdown and "### meta.boundary.distance = 0" in report.markdown
    with pytest.raises(UserError, match="--by meta.nothing: no result row has this field"):
        build_report([run], by=["meta.nothing"])


def test_runs_with_different_schemas_side_by_side(tmp_path):
    v2_text = json.dumps({"risk_level": "높음", "matches": [{"element_id": "E1", "reason": "일치", "match": "대응"}]}, ensure_ascii=False)
    v1 = write_run(tmp_path / "plain", [simple("s", "높음", "높음")], info(False, "v1"))
    v2 = write_run(tmp_path / "reasoned", [row("s", "높음", [("E1", "대응")], v2_text)], info(True, "v2"))
    report = build_report([v1, v2], bootstrap=50)
    h1, h2 = (schema_hash(load_schema(n))[:8] for n in ("v1", "v2"))
    assert f"| metric | plain (v1 #{h1}) | reasoned (v2 #{h2}) |" in report.markdown
    assert report.metrics["runs"]["reasoned"]["json_valid"]["count"] == 1
    assert [r["schema"]["name"] for r in report.metrics["run_list"]] == ["v1", "v2"]


def test_recorded_schema_hash_that_differs_is_a_warning(tmp_path):
    run = write_run(tmp_path / "r", [simple("s", "높음", "높음")], {**info(True), "schema": {"name": "v1", "hash": "0000"}})
    report = build_report([run], bootstrap=0)
    assert report.metrics["runs"]["r"]["schema"]["hash"] == "0000"
    assert any("scored against the committed schema" in w for w in report.warnings)


def test_results_only_directory_is_enough(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    (run / RESULTS).write_text(json.dumps({"id": "a", "gold": None, "raw_output": "{}", "finish_reason": "length"}) + "\n")
    report = build_report([run], bootstrap=0)
    r = report.metrics["runs"]["bare"]
    assert r["schema"]["name"] == "v1" and r["constrained"] is None and r["provenance"] == {}
    assert r["risk_accuracy"] == {"count": 0, "total": 0, "rate": None, "ci95": None}
    assert r["invalid_outputs"][0]["kind"] == "schema_failure" and r["finish_length"] == 1


def test_slices_by_numeric_bins(tmp_path):
    rows = [simple(i, "애매", "낮음" if isinstance(d, float) and d < 1 else "애매", meta={"boundary_distance": d})
            for i, d in [("a", 0.2), ("b", 0.5), ("c", 0.9), ("d", 1.5), ("e", 7.0), ("f", "n/a")]]
    run = write_run(tmp_path / "r", rows)
    report = write_report([run], tmp_path / "out", by=["meta.boundary_distance:0.5,1,2"], bootstrap=0)
    sl = report.metrics["runs"]["r"]["slices"]["meta.boundary_distance:0.5,1,2"]
    assert {k: v["n"] for k, v in sl.items()} == {"<0.5": 1, "0.5–1": 2, "1–2": 1, "≥2": 1, "n/a": 1}
    assert sl["0.5–1"]["risk_accuracy"]["count"] == 0 and sl["1–2"]["risk_accuracy"]["count"] == 1
    md = report.markdown
    assert md.index("= <0.5") < md.index("= 0.5–1") < md.index("= 1–2") < md.index("= ≥2")
    for bad in ["meta.boundary_distance:", "meta.boundary_distance:2,1", "meta.boundary_distance:x"]:
        with pytest.raises(UserError, match="bin edges"):
            build_report([run], by=[bad])


# --- schema comparison (issue 18): risk_consistent, speed, pairs within an arm ----------------------------------

def _schema_row(rid: str, schema: str, gold: tuple[str, list[str]], pred: tuple[str, list[str]] | None, tokens: int) -> dict:
    from patent_risk.schemas.output import output_object, render_compact

    ids = [f"E{j + 1}" for j in range(len(gold[1]))]
    text = "{\"matches\": [" if pred is None else render_compact(output_object(
        schema, pred[0], [{"element_id": e, "reason": "이유", "match": m} for e, m in zip(ids, pred[1])]))
    return row(rid, gold[0], list(zip(ids, gold[1])), text, output_tokens=tokens)


GOLDS = [("높음", ["대응", "대응"]), ("애매", ["대응", "판단불가"]), ("낮음", ["미대응", "대응"]), ("애매", ["판단불가", "대응"])] * 3


def _schema_runs(tmp_path) -> list:
    """Six runs over the same 12 samples: v1, v2, v3, each constrained and not. Every run gets each sample's
    matches right; its risk_level is right, except where it is given otherwise below, and then inconsistent
    with its own matches (the all-elements rule) unless the matches change with it."""
    runs = []
    for schema in ("v1", "v2", "v3"):
        for constrained in (True, False):
            rows = []
            for i, (risk, matches) in enumerate(GOLDS):
                pred: tuple[str, list[str]] | None = (risk, matches)
                if schema == "v1" and risk == "애매" and i < 8:  # 4 애매 called 낮음 with their own matches: inconsistent
                    pred = ("낮음", matches)
                if schema == "v3" and i == 2:  # 낮음 called 높음, and its matches say 높음 too: consistent, wrong
                    pred = ("높음", ["대응", "대응"])
                if not constrained and i == 11:
                    pred = None  # one truncated output in each unconstrained run
                rows.append(_schema_row(f"s{i}", schema, GOLDS[i], pred, tokens=10 * (1 + (schema == "v2")) + i % 2))
            arm = "constrained" if constrained else "unconstrained"
            runs.append(write_run(tmp_path / f"{schema}-{arm}", rows,
                                  {**info(constrained, schema), "generation_s": 4.0 if schema == "v2" else 2.0}))
    return runs


def test_schema_comparison_report(tmp_path):
    """What the comparison command's report shows: 애매 recall, risk_consistent under the all-elements rule,
    output tokens per sample and samples/s from run.json's generation_s, each schema's name and hash, and
    the paired statistics between schemas within each arm (no constrained run paired with an unconstrained one)."""
    runs = _schema_runs(tmp_path)
    report = write_report(runs, tmp_path / "out", bootstrap=200, risk_rule="all-elements", pairs="within-arm")
    m = report.metrics
    assert m["pairs"] == "within-arm" and m["risk_rule"] == "all-elements"
    pairs = [(c["reference"], c["run"]) for c in m["comparisons"]]
    assert pairs == [("v1-constrained", "v2-constrained"), ("v1-constrained", "v3-constrained"),
                     ("v1-unconstrained", "v2-unconstrained"), ("v1-unconstrained", "v3-unconstrained"),
                     ("v2-constrained", "v3-constrained"), ("v2-unconstrained", "v3-unconstrained")]
    r = m["runs"]
    assert r["v1-constrained"]["risk_consistent"] == {"count": 8, "total": 12, "rate": 0.6667}
    assert r["v1-unconstrained"]["risk_consistent"] == {"count": 7, "total": 11, "rate": 0.6364}  # the invalid one is left out
    assert r["v3-constrained"]["risk_consistent"]["count"] == 12 and r["v3-constrained"]["risk_accuracy"]["count"] == 11
    assert r["v1-constrained"]["risk_per_class"]["애매"]["recall"] == round(2 / 6, 4)
    assert r["v2-constrained"]["speed"] == {"generation_s": 4.0, "precompile_s": None, "decode_s": 4.0, "output_tokens": 246, "output_tokens_per_sample": 20.5,
                                             "samples_per_s": 3.0, "output_tokens_per_s": 61.5}
    assert r["v1-constrained"]["speed"]["samples_per_s"] == 6.0
    v1_v2 = m["comparisons"][0]
    assert v1_v2["risk_accuracy"]["mcnemar"] == {"b": 0, "c": 4, "p_value": 0.125}
    assert v1_v2["risk_accuracy"]["ci95"] is not None and v1_v2["match_accuracy"]["difference"] == 0.0
    assert any("schema.name" in d for d in v1_v2["differs"])
    md = report.markdown
    hashes = {n: schema_hash(load_schema(n))[:8] for n in ("v1", "v2", "v3")}
    assert "## Schemas" in md and all(f"#{h}" in md for h in hashes.values())
    assert "element-first: matches, then risk_level" in md
    assert "| 애매 recall | risk_consistent (all-elements) | output tokens / sample | samples/s |" in md
    assert f"| **v2-constrained (v2 #{hashes['v2']}) vs v1-constrained (v1 #{hashes['v1']})** |" in md
    assert "Paired comparisons within each arm" in md
    done = check_contract("metrics", report.metrics_path)
    assert done.returncode == 0, done.stdout


def test_without_a_risk_rule_risk_consistent_is_not_scored(tmp_path):
    runs = _schema_runs(tmp_path)[:2]
    report = build_report(runs, bootstrap=0)
    assert report.metrics["runs"]["v1-constrained"]["risk_consistent"] is None
    assert "risk_consistent (" not in report.markdown
    assert [(c["reference"], c["run"]) for c in report.metrics["comparisons"]] == [("v1-constrained", "v1-unconstrained")]
    with pytest.raises(UserError, match="unknown risk rule 'majority'; known rules: all-elements"):
        build_report(runs, bootstrap=0, risk_rule="majority")


def test_a_legacy_schema_hash_is_no_warning(tmp_path):
    """run.json written before the hash kept property order: the same committed schema, no warning."""
    from patent_risk.schemas.output import legacy_schema_hash

    legacy = legacy_schema_hash(load_schema("v1"))
    run = write_run(tmp_path / "r", [simple("s", "높음", "높음")], {**info(True), "schema": {"name": "v1", "hash": legacy}})
    report = build_report([run], bootstrap=0)
    assert report.warnings == [] and report.metrics["runs"]["r"]["schema"]["hash"] == schema_hash(load_schema("v1"))


def test_invalid_outputs_by_kind_and_validity_paired(tmp_path):
    """Issue 30: each output that is not record_valid has one kind (truncated, not JSON, schema, wrong ids), and a
    comparison pairs record_valid with McNemar as it does json_valid."""
    ok = output_text("낮음", [("E1", "대응")])
    rows = [row("1", "낮음", [("E1", "대응")], ok),
            row("2", "낮음", [("E1", "대응")], '{"risk_level": "낮', finish="length"),
            row("3", "낮음", [("E1", "대응")], "I think it is low"),
            row("4", "낮음", [("E1", "대응")], '{"risk_level": "중간", "matches": []}'),
            row("5", "낮음", [("E1", "대응")], output_text("낮음", [("E9", "대응")]))]
    free = write_run(tmp_path / "free", rows, info(False))
    held = write_run(tmp_path / "held", [row(str(i), "낮음", [("E1", "대응")], ok) for i in range(1, 6)], info(True))
    report = build_report([held, free])
    metrics = report.metrics
    r = metrics["runs"]["free"]
    assert r["invalid_kinds"] == {"truncated": 1, "not_json": 1, "schema": 1, "wrong_ids": 1}
    assert r["json_valid"]["count"] == 2 and r["record_valid"]["count"] == 1
    assert metrics["runs"]["held"]["invalid_kinds"] == {"truncated": 0, "not_json": 0, "schema": 0, "wrong_ids": 0}
    c = metrics["comparisons"][0]
    assert c["json_valid"]["mcnemar"]["b"] == 3 and c["json_valid"]["mcnemar"]["c"] == 0
    assert c["record_valid"]["reference"]["count"] == 5 and c["record_valid"]["run"]["count"] == 1
    assert c["record_valid"]["mcnemar"]["b"] == 4
    assert "json_valid 100.0% (5/5) → 40.0% (2/5) (McNemar exact p = 0.25, b = 3, c = 0)" in report.summary_markdown
    assert "1 / 1 / 1 / 1" in report.markdown  # the side-by-side line of kinds


def _probs_row(rid: str, gold: str, written: str, conf: float) -> dict:
    """A one-element sample that wrote ``written`` for risk with confidence ``conf`` (the rest split evenly), and
    대응 for E1 with confidence 0.9."""
    risk = {lab: (conf if lab == written else (1 - conf) / 2) for lab in ("높음", "애매", "낮음")}
    lp = {"risk_level": {"label": written, "probs": risk, "mass": 0.99},
          "matches": [{"element_id": "E1", "label": "대응", "probs": {"대응": 0.9, "판단불가": 0.05, "미대응": 0.05}, "mass": 1.0}]}
    return simple(rid, gold, written, label_probs=lp)


def test_calibration_section_from_rows_with_label_probabilities(tmp_path):
    """Runs whose rows carry label probabilities get ECE, Brier, AURC and the keep-at-95% rule in metrics.json,
    the table in report.md and a reliability diagram and risk-coverage chart in report.html; a run without
    them has no calibration and the report says nothing of it."""
    rows = [_probs_row(f"s{i}", "높음", "높음" if i < 8 else "낮음", 0.95 if i < 8 else 0.5) for i in range(10)]
    rows.append(simple("s10", "애매", None, label_probs={"missing": "the answer is not valid JSON: no decision point"}))
    sure = write_run(tmp_path / "sure", rows, info(True))
    plain = write_run(tmp_path / "plain", [simple(f"s{i}", "높음", "높음") for i in range(11)], info(False))
    report = write_report([plain, sure], tmp_path / "out", bootstrap=200, seed=1)
    assert report.metrics["runs"]["plain"]["calibration"] is None
    cal = report.metrics["runs"]["sure"]["calibration"]
    risk = cal["risk_level"]
    assert cal["rows_with_probabilities"] == 10 and cal["rows_without_decision_points"] == 1
    assert risk["decisions"] == 10 and risk["accuracy"] == 0.8
    assert risk["ece"] == pytest.approx(0.8 * abs(1 - 0.95) + 0.2 * abs(0 - 0.5))
    assert risk["aurc"] == pytest.approx((0 * 8 + 1 / 9 + 2 / 10) / 10)
    assert risk["keep_at_accuracy"][0]["coverage"] == 0.8 and risk["keep_at_accuracy"][0]["threshold"] == 0.95
    md = report.markdown
    assert "## Confidence and calibration" in md and "| sure | risk_level | 10 | 80.0% |" in md
    assert "sure: 1 row(s) without decision points" in md
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert html.count("reliability</figcaption>") == 2 and html.count("risk-coverage</figcaption>") == 2
    assert '<h2 id="confidence-and-calibration">' in html  # a link to the section: report.html#confidence-and-calibration
    assert report.metrics["comparisons"][0]["calibration"] is None  # plain has no probabilities to pair
    flat = write_run(tmp_path / "flat", [_probs_row(f"s{i}", "높음", "높음" if i >= 2 else "낮음", 0.9) for i in range(10)],
                     info(True))  # as sure as ever when wrong: nothing to rank by
    paired = write_report([flat, sure], tmp_path / "out2", bootstrap=200, seed=1)
    risk = paired.metrics["comparisons"][0]["calibration"]["risk_level"]
    assert risk["decisions"] == 10 and risk["aurc"]["run"] < risk["aurc"]["reference"]  # sure ranks its errors last
    assert "Calibration, paired on the decisions both runs read" in paired.markdown
    assert check_contract("metrics", report.metrics_path).returncode == 0


def test_report_applies_a_dev_calibration_and_refuses_one_fitted_on_its_own_records(tmp_path):
    from patent_risk.evaluate import calibrate

    dev_rows = [_probs_row(f"d{i}", "높음" if i % 2 else "애매", "높음", 0.9) for i in range(12)]
    for r in dev_rows:
        r["query"] = "dev " + r["query"]
    eval_rows = [_probs_row(f"s{i}", "높음", "높음" if i % 4 else "낮음", 0.9) for i in range(12)]
    dev = write_run(tmp_path / "dev", dev_rows, info(True))
    ev = write_run(tmp_path / "eval", eval_rows, info(True))
    calibrate.write(calibrate.fit(dev_rows, accuracy=0.9), tmp_path / "cal.json")
    report = write_report([ev], tmp_path / "out", bootstrap=0, calibration=tmp_path / "cal.json")
    got = report.metrics["runs"]["eval"]["calibrated"]
    assert got["source"].endswith("cal.json") and got["risk_level"]["temperature"] > 0
    assert "### Calibrated on a dev run" in report.markdown
    with pytest.raises(UserError, match="that are in run dev"):
        write_report([dev], tmp_path / "out2", bootstrap=0, calibration=tmp_path / "cal.json")
