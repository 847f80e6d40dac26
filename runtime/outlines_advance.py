"""vLLM's outlines backend, two costs cut (issue 34): its grammar advanced without building the next state's token
list, and its masks kept per (schema, state).

vLLM 0.32.0's ``OutlinesGrammar.accept_tokens`` (``vllm/v1/structured_output/backend_outlines.py``) advances the
outlines-core ``Guide`` with ``guide.advance(t)``, and ``Guide.advance`` "returns a list of allowed tokens, unless
return_tokens is False": every accepted token builds a Python list of every token the new state allows, which the
caller throws away. In a JSON structure state that is a few tokens; inside a free-text string it is most of Gemma's
262,144. py-spy over a constrained pass of schema v2 (a reason string before each match) at batch 147:
``OutlinesGrammar.accept_tokens`` 61.6 of the pass's 120 extra CPU-seconds, in the engine core, after each step
and before the next (``Scheduler.update_from_output``), so on a GPU server as on a CPU
(docs/2026-12-07-constraint-cost.md).

Here the two methods that advance (``accept_tokens`` and ``_is_finished_after``) are vLLM 0.32.0's own, line for
line, with ``return_tokens=False``: the same states, without the lists. The fix belongs upstream (one argument).

The second cost is ``fill_bitmask``: ``guide.write_mask_into`` walks the current state's allowed tokens to set
their bits, 0.4 ms a row inside a string on Gemma's vocabulary (bench grammar-step), for every request at every
step. The mask is a function of the index and the state alone, and every request of a schema walks the same
states (a bounded string is a chain of them). So the masks are kept per (schema, state) and copied (32 KB) on the
next visit: ``fill_bitmask`` below, bounded by ``PATENT_RISK_OUTLINES_MASK_CACHE_MB`` (default
``DEFAULT_MASK_CACHE_MB`` per engine; 0 turns it off), least recently used first out.

Installed by the outlines plugin (``runtime.outlines_cache.register``, in every vLLM process) for that vLLM version
only; ``PATENT_RISK_STOCK_OUTLINES_ADVANCE=1`` keeps vLLM's three methods.
"""
from __future__ import annotations

import ctypes
import os
import threading
from collections import OrderedDict

PINNED_VLLM_VERSION = "0.32.0"
DISABLE_ENV = "PATENT_RISK_STOCK_OUTLINES_ADVANCE"
MASK_CACHE_ENV = "PATENT_RISK_OUTLINES_MASK_CACHE_MB"
DEFAULT_MASK_CACHE_MB = 256
_MASKS = "_patent_risk_masks"  # on a backend: its StateMasks; on a grammar: (StateMasks, its schema's key)
MANY_WORDS_FRACTION = 8  # a row is cached when at least 1/8 of its 32-token words allow a token
FEW = object()  # the cache's answer for a state that allows few tokens: written by outlines, not copied
_STOCK: dict = {}  # vLLM's own methods, as found before the first install


class StateMasks:
    """Token masks by (schema, state), least recently used out past ``capacity`` rows; thread-safe (vLLM fills the
    rows of a batch over 128 on a thread pool)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.hits = 0
        self._rows: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                return None
            self.hits += 1
            self._rows.move_to_end(key)
            return row

    def put(self, key, row) -> None:
        with self._lock:
            self._rows[key] = row
            while len(self._rows) > self.capacity:
                self._rows.popitem(last=False)

    def __len__(self) -> int:
        return len(self._rows)


def mask_cache_rows(row_bytes: int) -> int:
    """How many mask rows of ``row_bytes`` the cache holds: ``PATENT_RISK_OUTLINES_MASK_CACHE_MB`` (default
    ``DEFAULT_MASK_CACHE_MB``) over the row's size; 0 turns the cache off."""
    raw = os.environ.get(MASK_CACHE_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MASK_CACHE_MB
    except ValueError:
        raise ValueError(f"{MASK_CACHE_ENV}={raw!r}: give the mask cache's size in MB (0 turns it off)") from None
    return max(0, int(mb * 2**20) // max(1, row_bytes))


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


def fill_bitmask(self, bitmask, idx: int) -> None:
    """vLLM 0.32.0's ``OutlinesGrammar.fill_bitmask``, the row copied from the cache when this schema's grammar has
    been in this state before and the state allows many tokens (the same bits: the mask depends on the index and
    the state alone). A state that allows few tokens is written by outlines as before: that is as fast as a copy."""
    mask = bitmask[idx]
    cache = getattr(self, _MASKS, None)
    if cache is not None:
        masks, schema_key = cache
        key = (schema_key, self.guide.get_state())
        row = masks.get(key)
        if row is not None and row is not FEW:
            ctypes.memmove(mask.data_ptr(), row.data_ptr(), row.nbytes)
            return
    self.guide.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())
    if cache is not None and row is None:
        # the share of the row's words with a bit set: most of them inside a string, a few in JSON's structure
        many = int(mask.count_nonzero()) * MANY_WORDS_FRACTION >= mask.numel()
        masks.put(key, mask.clone() if many else FEW)


def compile_grammar(self, request_type, grammar_spec, *args, **kwargs):
    """vLLM's ``OutlinesBackend.compile_grammar``, the grammar given this backend's mask cache and its schema's key
    (the request type and the spec: the same spec compiles to the same index)."""
    grammar = _STOCK["compile_grammar"](self, request_type, grammar_spec, *args, **kwargs)
    masks = self.__dict__.get(_MASKS)
    if masks is None:
        rows = mask_cache_rows(((self.vocab_size + 31) // 32) * 4)
        masks = self.__dict__.setdefault(_MASKS, StateMasks(rows) if rows else False)
    if masks is not False:
        setattr(grammar, _MASKS, (masks, (str(request_type), grammar_spec)))
    return grammar


_PATCHES = {"OutlinesGrammar": {"accept_tokens": accept_tokens, "_is_finished_after": _is_finished_after,
                                "fill_bitmask": fill_bitmask},
            "OutlinesBackend": {"compile_grammar": compile_grammar}}


def _classes() -> dict:
    from vllm.v1.structured_output import backend_outlines

    return {name: getattr(backend_outlines, name) for name in _PATCHES}


def install() -> bool:
    """Put the methods on vLLM's ``OutlinesGrammar`` and ``OutlinesBackend`` (idempotent); False, changing nothing,
    on another vLLM version, without outlines-core, or with ``PATENT_RISK_STOCK_OUTLINES_ADVANCE=1``."""
    if os.environ.get(DISABLE_ENV, "").strip() == "1":
        return False
    try:
        import vllm
        classes = _classes()
    except ImportError:
        return False
    if getattr(vllm, "__version__", None) != PINNED_VLLM_VERSION:
        return False
    for cls_name, methods in _PATCHES.items():
        for name, fn in methods.items():
            current = classes[cls_name].__dict__[name]
            if current is not fn:
                _STOCK.setdefault(name, current)
            setattr(classes[cls_name], name, fn)
    return True


def is_installed() -> bool:
    try:
        classes = _classes()
    except ImportError:
        return False
    return all(classes[c].__dict__.get(n) is fn for c, methods in _PATCHES.items() for n, fn in methods.items())


def uninstall() -> None:
    """vLLM's own methods back (those found before the first install)."""
    classes = _classes()
    for cls_name, methods in _PATCHES.items():
        for name in methods:
            if name in _STOCK:
                setattr(classes[cls_name], name, _STOCK[name])
