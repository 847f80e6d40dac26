"""The tests' run-directory fixtures: run directories written by evaluate.rundir.write_run (the format's owner),
and model outputs for given labels (compact, indented as xgrammar writes them, or fenced), the same synthetic
outputs the report-speed benchmark generates."""
from __future__ import annotations

from patent_risk.bench.report_speed import output_text
from patent_risk.evaluate.rundir import write_run

__all__ = ["output_text", "write_run"]
