"""Progress where the output is not a terminal (issue 29): whole lines every tenth of the work, no carriage
returns; on a terminal, tqdm's bar."""
from __future__ import annotations

import io

from patent_risk.runtime.progress import LineProgress, progress_bar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_per_tenth_and_one_at_the_end():
    out = io.StringIO()
    bar = progress_bar(147, unit="sample", desc="evaluate", file=out)
    assert isinstance(bar, LineProgress)
    for _ in range(147):
        bar.update(1)
        bar.set_postfix(tok_s="41.0", refresh=False)
    bar.close()
    bar.close()
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 11, lines  # 14, 28, ... 140 (every 14 = a tenth of 147), then the end
    assert lines[0].startswith("evaluate: 14/147 samples (10%), ") and "tok_s=41.0" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("evaluate: 147/147 samples (100%)") and "ETA" not in lines[-1]


def test_a_chunk_that_jumps_several_tenths_writes_one_line():
    out = io.StringIO()
    bar = progress_bar(100, unit="sample", desc="x", file=out)
    bar.update(64)
    bar.update(36)
    bar.close()
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == ["x: 64/100 samples (64%)", "x: 100/100 samples (100%)"]


def test_a_terminal_keeps_its_bar_and_disabled_writes_nothing():
    tty = _Tty()
    bar = progress_bar(4, unit="sample", desc="evaluate", file=tty)
    assert type(bar).__name__ == "tqdm"
    bar.close()
    quiet = io.StringIO()
    off = progress_bar(4, enabled=False, file=quiet)
    off.update(4)
    off.close()
    assert quiet.getvalue() == ""
