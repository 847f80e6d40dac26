"""vLLM's outlines backend advancing its grammar without building the next state's token list (issue 34).

vLLM 0.32.0's ``OutlinesGrammar.accept_tokens`` (``vllm/v1/structured_output/backend_outlines.py``) advances the
outlines-core ``Guide`` with ``guide.advance(t)``, and ``Guide.advance`` "returns a list of allowed tokens, unless
return_tokens is False": every accepted token builds a Python list of every token the new state allows, which the
caller throws away. In a JSON structure state that is a few tokens; inside a free-text string it is most of Gemma's
262,144. py-spy over a constrained pass of schema v2 (a reason string before each match) at batch 147:
``OutlinesGrammar.accept_tokens`` 61.6 of the pass's 120 extra CPU-seconds, in the engine core, after each step
and before the next (``Scheduler.update_from_output``), so on a GPU server as on a CPU
(docs/2026-12-07-constraint-cost.md).

Here the two methods that advance (``accept_tokens`` and ``_is_finished_after``) are vLLM 0.32.0's own, line for
line, with ``return_tokens=False``: the same states, without the lists. Installed by the outlines plugin
(``runtime.outlines_cache.register``, in every vLLM process) for that vLLM version only;
``PATENT_RISK_STOCK_OUTLINES_ADVANCE=1`` keeps vLLM's. The fix belongs upstream (one argument).
"""
from __future__ import annotations

import os

PINNED_VLLM_VERSION = "0.32.0"
DISABLE_ENV = "PATENT_RISK_STOCK_OUTLINES_ADVANCE"


def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
    """vLLM 0.32.0's ``OutlinesGrammar.accept_tokens`` with ``advance(t, return_tokens=False)``."""
    if self._is_terminated:
        return True
    eos_index = next((i for i, t in enumerate(tokens) if t == self.eos_token_id), None)
    if eos_index is not None:
        tokens = tokens[:eos_index]
    if tokens and not self.guide.accepts_tokens(tokens):
        return False
    for t in tokens:
        self.guide.advance(t, return_tokens=False)
    if eos_index is not None:
        if not self.guide.is_finished():
            if tokens:
                self.guide.rollback_state(len(tokens))
            return False
        self._is_terminated = True
    self.num_processed_tokens += len(tokens) + self._is_terminated
    return True


def _is_finished_after(self, tokens: list[int]) -> bool:
    """vLLM 0.32.0's ``OutlinesGrammar._is_finished_after`` with ``advance(t, return_tokens=False)``."""
    if not tokens:
        return self.guide.is_finished()
    for t in tokens:
        self.guide.advance(t, return_tokens=False)
    finished = self.guide.is_finished()
    self.guide.rollback_state(len(tokens))
    return finished


def install() -> bool:
    """Put the two methods on vLLM's ``OutlinesGrammar`` (idempotent); False, changing nothing, on another vLLM
    version, without outlines-core, or with ``PATENT_RISK_STOCK_OUTLINES_ADVANCE=1``."""
    if os.environ.get(DISABLE_ENV, "").strip() == "1":
        return False
    try:
        import vllm
        from vllm.v1.structured_output.backend_outlines import OutlinesGrammar
    except ImportError:
        return False
    if getattr(vllm, "__version__", None) != PINNED_VLLM_VERSION:
        return False
    OutlinesGrammar.accept_tokens = accept_tokens
    OutlinesGrammar._is_finished_after = _is_finished_after
    return True


def is_installed() -> bool:
    try:
        from vllm.v1.structured_output.backend_outlines import OutlinesGrammar
    except ImportError:
        return False
    return OutlinesGrammar.accept_tokens is accept_tokens


def uninstall(stock: dict) -> None:
    from vllm.v1.structured_output.backend_outlines import OutlinesGrammar

    for name, fn in stock.items():
        setattr(OutlinesGrammar, name, fn)
