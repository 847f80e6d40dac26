"""A faster way to apply the structured-outputs bitmask to the logits on vLLM's CPU backend (a vLLM general plugin).

vLLM applies the grammar's bitmask (one bit per vocabulary token, 32 tokens a word) with xgrammar's
``apply_token_bitmask_inplace`` (``vllm/v1/structured_output/utils.py``, ``apply_grammar_bitmask``); on CPU logits
that is xgrammar's C++ kernel, which tests one bit per logit on one thread. On Gemma's 262,144-token vocabulary it
is the constraint's largest cost here: py-spy over a constrained pass at batch 32 found 11.2 of the pass's 19.1
extra CPU seconds in it (docs/2026-12-07-constraint-cost.md), and it is slowest where JSON spends its steps, on
positions that ban almost every token (57 ms for 32 rows here, against 4 ms for rows that allow almost all).
``apply_bitmask_cpu`` applies the same mask a 32-token word at a time (torch, vectorized): the same logits, bit for
bit (tests/test_cpu_grammar.py); a mask of mostly mixed words goes to xgrammar's kernel.

It swaps the module-level ``xgr`` of ``vllm.v1.structured_output.utils`` for a thin object that sends CPU tensors
here and everything else (CUDA logits, every other xgrammar call) to xgrammar itself. vLLM starts its worker
processes afresh, so the swap happens in each through the ``vllm.general_plugins`` entry point::

    [project.entry-points."vllm.general_plugins"]
    patent_risk_cpu_grammar = "patent_risk.runtime.cpu_grammar:register"

Only on the CPU platform and the vLLM version it was written against; ``PATENT_RISK_STOCK_GRAMMAR_MASK=1`` keeps
xgrammar's kernel. Imports nothing heavy at import time.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

PINNED_VLLM_VERSION = "0.32.0"
DISABLE_ENV = "PATENT_RISK_STOCK_GRAMMAR_MASK"
TARGET_MODULE = "vllm.v1.structured_output.utils"

logger = logging.getLogger("vllm.plugins.patent_risk_cpu_grammar")


MIXED_SHARE_LIMIT = 0.25  # above this share of words that are neither all-allowed nor all-banned: xgrammar's kernel


def apply_bitmask_cpu(logits, bitmask, indices: list[int] | None = None, vocab_size: int | None = None,
                      mostly_allowed: Callable[[list[int]], None] | None = None) -> bool:
    """In place: ``logits[r, t] = -inf`` where bit ``t % 32`` of ``bitmask[r, t // 32]`` is 0, for the rows ``indices``
    (all when None), as xgrammar's ``apply_token_bitmask_inplace`` (its torch reference:
    ``kernels/apply_token_bitmask_inplace_torch.py``). Word by word instead of bit by bit: a JSON-schema mask bans
    whole 32-token words or allows them, and only the few mixed words need their bits. A row that bans most words
    is filled with -inf at once and its allowed words put back; a row that allows most has only its banned words
    filled. With ``mostly_allowed`` given, the rows that allow most words are handed to it instead (their row
    numbers): xgrammar's kernel skips whole allowed words and is the faster one on such rows (inside a JSON
    string). Returns False, having changed nothing, where this layout does not apply (a vocabulary that is not
    whole words, or mostly mixed words): the caller then uses xgrammar's kernel."""
    import torch

    words = bitmask.shape[-1]
    vocab = min(logits.shape[-1], words * 32) if vocab_size is None else vocab_size
    if vocab != words * 32 or logits.dim() != 2 or not logits.is_contiguous():
        return False
    rows = torch.arange(logits.shape[0]) if indices is None else torch.as_tensor(list(indices), dtype=torch.long)
    if rows.numel() == 0:
        return True
    masks = bitmask[rows]
    banned = masks == 0
    mostly_banned = banned.sum(dim=1) * 2 > words
    if mostly_allowed is not None and not bool(mostly_banned.all()):
        handed = rows[~mostly_banned].tolist()
        rows, masks, banned = rows[mostly_banned], masks[mostly_banned], banned[mostly_banned]
        mostly_banned = mostly_banned[mostly_banned]
    else:
        handed = []
    kept = ~banned
    mixed = kept & (masks != -1)
    if int(mixed.sum()) > MIXED_SHARE_LIMIT * max(1, masks.numel()):
        return False
    if handed:
        mostly_allowed(handed)
    if rows.numel() == 0:
        return True
    view = logits[:, :vocab].view(logits.shape[0], words, 32)
    shift = torch.arange(32, dtype=torch.int32)
    if bool(mostly_banned.any()):  # fill the row, put back its allowed words (their banned bits -inf)
        sel = mostly_banned.nonzero().flatten()
        r, w = kept[sel].nonzero(as_tuple=True)
        row_ids, word_ids = rows[sel][r], w
        saved = view[row_ids, word_ids].clone()
        bits = (masks[sel][r, w].unsqueeze(-1) >> shift) & 1
        saved.masked_fill_(bits == 0, float("-inf"))
        logits[rows[sel], :vocab] = float("-inf")
        view[row_ids, word_ids] = saved
    rest = ~mostly_banned
    if bool(rest.any()):  # fill only the banned words, then the mixed words bit by bit
        sel = rest.nonzero().flatten()
        r, w = banned[sel].nonzero(as_tuple=True)
        view[rows[sel][r], w] = float("-inf")
        r, w = mixed[sel].nonzero(as_tuple=True)
        if r.numel():
            row_ids = rows[sel][r]
            part = view[row_ids, w]
            bits = (masks[sel][r, w].unsqueeze(-1) >> shift) & 1
            view[row_ids, w] = part.masked_fill_(bits == 0, float("-inf"))
    return True


class _XgrammarOnCpu:
    """xgrammar as vLLM's structured-outputs utils see it, with the CPU bitmask applied by ``apply_bitmask_cpu``."""

    def __init__(self, real: Any):
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def apply_token_bitmask_inplace(self, logits, bitmask, *, vocab_size=None, indices=None):
        import torch

        if (logits.device.type == "cpu" and bitmask.device.type == "cpu" and logits.dim() == 2 and bitmask.dim() == 2
                and bitmask.dtype == torch.int32 and sys.byteorder == "little"):
            if isinstance(indices, torch.Tensor):
                indices = indices.tolist()
            def stock(rows: list[int]) -> None:  # rows that allow most words: xgrammar's kernel is faster there
                self._real.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab_size, indices=rows)

            if apply_bitmask_cpu(logits, bitmask, indices, vocab_size, mostly_allowed=stock):
                return None
        return self._real.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab_size, indices=indices)


def _skip_reason() -> str | None:
    if os.environ.get(DISABLE_ENV, "").strip() == "1":
        return f"{DISABLE_ENV}=1"
    import vllm

    version = getattr(vllm, "__version__", None)
    if version != PINNED_VLLM_VERSION:
        return f"vLLM {version} is not the pinned {PINNED_VLLM_VERSION} this was written against"
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return "the platform is not CPU"
    return None


def is_installed() -> bool:
    mod = sys.modules.get(TARGET_MODULE)
    return mod is not None and isinstance(getattr(mod, "xgr", None), _XgrammarOnCpu)


def install() -> bool:
    """Swap in the CPU bitmask path (idempotent); False, with the reason logged, where it does not apply."""
    reason = _skip_reason()
    if reason is not None:
        logger.info("Keeping xgrammar's CPU bitmask kernel: %s.", reason)
        return False
    import importlib

    mod = importlib.import_module(TARGET_MODULE)
    if not isinstance(mod.xgr, _XgrammarOnCpu):
        # the module itself, not vLLM's LazyLoader: on first use a LazyLoader puts the module in its place in the
        # module's globals, which would silently remove this wrapper
        mod.xgr = _XgrammarOnCpu(importlib.import_module("xgrammar"))
        logger.info("patent_risk_cpu_grammar: the structured-outputs bitmask is applied word by word on CPU logits.")
    return True


def uninstall() -> None:
    mod = sys.modules.get(TARGET_MODULE)
    if mod is not None and isinstance(getattr(mod, "xgr", None), _XgrammarOnCpu):
        mod.xgr = mod.xgr._real


def register() -> None:
    """The ``vllm.general_plugins`` entry point (vLLM calls it in every process)."""
    try:
        install()
    except Exception as exc:  # noqa: BLE001 - a speed-up only: never stop vLLM from starting
        logger.warning("patent_risk_cpu_grammar: not installed (%s: %s)", type(exc).__name__, exc)
