"""Progress for long work: tqdm's bar on a terminal; where the output is not one (a CI log, `make demo >
demo.log`), one plain line every tenth of the work and one at its end, never carriage-return frames."""
from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO


class LineProgress:
    """tqdm's update / set_postfix / close, written as whole lines: ``desc: 30/147 samples (20%), 2.1 samples/s,
    tok_s=41.0, ETA 56 s``, each time another ``step`` of the total is done."""

    def __init__(self, total: int, unit: str = "it", desc: str = "progress", step: float = 0.1,
                 file: TextIO | None = None) -> None:
        self.total, self.unit, self.desc, self.file = total, unit, desc, file or sys.stderr
        self.n = 0
        self._every = max(1, int(total * step)) if total else 1
        self._next = self._every
        self._postfix: dict[str, Any] = {}
        self._t0 = time.perf_counter()
        self._closed = False

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self._postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self._next and self.n < self.total:
            self._line()
            while self._next <= self.n:
                self._next += self._every

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n:
                self._line()

    def _line(self) -> None:
        spent = time.perf_counter() - self._t0
        rate = self.n / spent if spent > 0 else 0.0
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}s ({100 * self.n / max(self.total, 1):.0f}%)",
                 f"{rate:.2f} {self.unit}s/s"]
        parts += [f"{k}={v}" for k, v in self._postfix.items()]
        if self.n < self.total and rate > 0:
            parts.append(f"ETA {(self.total - self.n) / rate:.0f} s")
        print(", ".join(parts), file=self.file, flush=True)

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Off:
    n = 0

    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, refresh: bool = False, **values: Any) -> None: ...

    def close(self) -> None: ...


def progress_bar(total: int, unit: str = "it", desc: str = "progress", enabled: bool = True, file: TextIO | None = None):
    """A tqdm bar on a terminal, ``LineProgress`` lines elsewhere, nothing when not ``enabled``."""
    file = file or sys.stderr
    if not enabled:
        return _Off()
    if getattr(file, "isatty", lambda: False)():
        from tqdm import tqdm

        # disable=False given: a TQDM_DISABLE that quiet_library_bars set for the libraries does not reach this bar
        return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, file=file, disable=False)
    return LineProgress(total, unit, desc, file=file)


def quiet_library_bars(stream: TextIO | None = None) -> bool:
    """Where ``stream`` (stderr) is not a terminal, turn off the progress bars of the libraries the commands call:
    transformers' "Loading weights" and "Writing model shards", huggingface_hub's downloads, and any tqdm that
    takes its defaults from ``TQDM_*`` variables (in a log file each bar is a run of carriage-return frames; the
    project's own work reports whole lines instead, ``progress_bar``). A value the user set wins. Returns whether
    it changed anything."""
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return False
    changed = False
    for key in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
        if key not in os.environ:
            os.environ[key] = "1"
            changed = True
    if changed and "transformers" in sys.modules:  # read HF_HUB_DISABLE_PROGRESS_BARS at its import
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return changed
