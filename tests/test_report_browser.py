"""report.html opened in a real headless browser (Debian's chromium; never a browser download)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from patent_risk.evaluate.report import write_report

from .runs import write_run
from .test_report import info, seed_rows

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: `make test` installs Debian's chromium package")
        pytest.skip("chromium not installed (make test installs it)")
    root = tmp_path_factory.mktemp("browser")
    rows = seed_rows()
    write_run(root / "unconstrained", rows, info(False))
    write_run(root / "constrained", rows[:-4] + [dict(r, raw_output='{"risk_level":"낮음","matches":[]}') for r in rows[-4:]], info(True))
    write_report([root / "unconstrained", root / "constrained"], root / "out")
    return root


def _chromium(root, *args):
    profile = root / "profile"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          timeout=120, text=True)


def test_report_renders_in_headless_chromium(report_html):
    page = (report_html / "out" / "report.html").as_uri()
    dom = _chromium(report_html, "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-500:]
    html = dom.stdout
    assert "<svg" in html and "<table" in html
    for text in ("정답: 애매", "예측: invalid", "McNemar", "unconstrained", "constrained"):
        assert text in html, text
    shot = report_html / "shot.png"
    done = _chromium(report_html, f"--screenshot={shot}", "--window-size=1200,2400", page)
    assert done.returncode == 0 and shot.stat().st_size > 20_000
