"""Progress where the output is not a terminal (issue 29): whole lines every tenth of the work, no carriage
returns; on a terminal, tqdm's bar."""
from __future__ import annotations

import io
import os

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


def test_library_bars_are_turned_off_for_a_log_and_kept_on_a_terminal(monkeypatch):
    from patent_risk.runtime.progress import quiet_library_bars

    for key in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
        monkeypatch.delenv(key, raising=False)
    assert quiet_library_bars(_Tty()) is False
    assert "TQDM_DISABLE" not in os.environ
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # the user's own choice wins
    assert quiet_library_bars(io.StringIO()) is True
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"
    # the project's own bar on a terminal still draws
    tty = _Tty()
    bar = progress_bar(3, desc="evaluate", file=tty)
    bar.update(3)
    bar.close()
    assert "evaluate" in tty.getvalue()


def test_a_library_tqdm_is_silent_in_a_log():
    """tqdm reads TQDM_* when it is imported: the commands set them before anything imports it (checked here in a
    fresh interpreter, as a command runs: stderr a pipe)."""
    import subprocess
    import sys

    code = ("import sys; from patent_risk.runtime.progress import quiet_library_bars; quiet_library_bars(); "
            "from tqdm import tqdm; [None for _ in tqdm(range(3))]; "
            "from transformers.utils import logging; [None for _ in logging.tqdm(range(3), desc='Loading weights')]")
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=120)  # bytes: \r kept
    assert done.returncode == 0, done.stderr
    assert b"\r" not in done.stderr and b"it/s" not in done.stderr, done.stderr
    bars = subprocess.run([sys.executable, "-c", code.replace("quiet_library_bars(); ", "")],
                          capture_output=True, env=env, timeout=120)
    assert bars.stderr.count(b"\r") >= 4, bars.stderr  # without it, both bars write carriage-return frames
