"""The demo's headline (issue 30): the untrained base's two arms paired on validity, in words. Pure: two written
runs and the real report."""
from __future__ import annotations

from patent_risk.cli.demo import constraint_summary
from patent_risk.evaluate.report import write_report

from .runs import output_text, write_run
from .test_report import info, row


def test_the_summary_leads_with_validity_paired(tmp_path):
    ok = output_text("낮음", [("E1", "대응")])
    held = write_run(tmp_path / "base-constrained", [row(str(i), "낮음", [("E1", "대응")], ok) for i in range(8)], info(True))
    free_rows = [row(str(i), "낮음", [("E1", "대응")], "The product contains a gelling agent" if i < 6 else ok,
                     finish="length" if i < 2 else "stop") for i in range(8)]
    free = write_run(tmp_path / "base-unconstrained", free_rows, info(False))
    write_report([held, free], tmp_path / "constraint")
    text = constraint_summary(tmp_path / "constraint" / "metrics.json")
    assert "held to the schema: 8/8 valid JSON, 8/8 with exactly the record's elements" in text
    assert "free:               2/8 valid JSON, 2/8" in text
    assert "2 truncated, 4 not json" in text and "finish_reason=length 2" in text
    assert "McNemar exact p = 0.0312 (b = 6, c = 0)" in text and "trivially significant" in text
