"""Faster LoRA ops for vLLM's CPU backend, installed as a vLLM general plugin.

vLLM's CPU punica ops (``vllm/lora/ops/torch_ops/lora_ops.py``) gather a copy
of the adapter weights for every token (``weights[lora_indices]``, a
``[tokens, out, in]`` tensor) and then ``einsum`` a batch of mat-vecs.  On a
CPU that copy and the batched mat-vec dominate decode time.  The replacements
(runtime/cpu_lora_ops.py) keep the stock signatures and the stock output handling verbatim; only
the computation of the per-token LoRA product changes: the tokens are grouped
by adapter and each group is multiplied by its adapter's matrix in one matmul
(no per-token weight gather).  Two ways to do that matmul (``MODE_ENV``):
``exact`` (default) is bitwise equal to the stock ops, ``matmul`` is faster
and equal up to float rounding.

Semantics kept from the stock ops: ``scaling`` (shrink), ``add_inputs``
(expand), slice offset and size (expand_slice), the ``common_len`` /
single-row broadcast rules of ``bgmv_expand``, the dtype casts to the output's
dtype, and the ``sgmv_*`` segment layout (``repeat_interleave`` of the
per-segment lora index by the segment lengths; ``b_seq_start_loc`` is ignored,
as in stock).

One deliberate difference: a token whose lora index is negative (-1 = no
adapter) gets no LoRA contribution (its product row is zero).  The stock ops
index ``weights[-1]``, i.e. the LAST adapter slot, which is only harmless while
that slot is empty (zeroed); with every slot filled, stock applies the last
adapter to base-model tokens.  Calls outside the regular layout (input rows
not matching the per-token indices, or tracing under ``torch.compile``, which
vLLM turns off with LoRA on CPU) are passed to the stock op unchanged.

The names are imported by name into ``vllm.lora.punica_wrapper.punica_cpu``
(and re-exported by ``vllm.lora.ops.torch_ops``), so :func:`install` patches
all three modules.  vLLM starts worker processes that import vLLM afresh, so
installation must happen in every process: :func:`register` is the entry point
of the ``vllm.general_plugins`` group, which vLLM runs in each process::

    [project.entry-points."vllm.general_plugins"]
    patent_risk_cpu_lora = "patent_risk.runtime.cpu_lora:register"

Set ``PATENT_RISK_STOCK_LORA_OPS=1`` to keep vLLM's stock ops.

This module imports nothing heavy at import time (torch and vLLM are imported
inside the functions).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from patent_risk.runtime import cpu_lora_ops
from patent_risk.runtime.cpu_lora_ops import (  # noqa: F401 - the ops and their modes, re-exported as the plugin's API
    _FAST_MARK,
    _STOCK,
    _TARGET_MODULES,
    DEFAULT_MODE,
    MODE_ENV,
    MODES,
    REPLACED_OPS,
    _stock,
    bgmv_expand,
    bgmv_expand_slice,
    bgmv_shrink,
    get_mode,
    set_mode,
    sgmv_expand,
    sgmv_expand_slice,
    sgmv_shrink,
)

__all__ = [
    "PINNED_VLLM_VERSION",
    "DISABLE_ENV",
    "MODE_ENV",
    "MODES",
    "get_mode",
    "set_mode",
    "REPLACED_OPS",
    "bgmv_shrink",
    "bgmv_expand",
    "bgmv_expand_slice",
    "sgmv_shrink",
    "sgmv_expand",
    "sgmv_expand_slice",
    "install",
    "uninstall",
    "is_installed",
    "register",
    "stock_ops",
]

#: The vLLM version whose ``torch_ops/lora_ops.py`` these replacements mirror.
#: Any other version keeps the stock ops (their semantics may have changed).
PINNED_VLLM_VERSION = "0.32.0"

#: ``PATENT_RISK_STOCK_LORA_OPS=1`` disables the replacement.
DISABLE_ENV = "PATENT_RISK_STOCK_LORA_OPS"

# A child of vLLM's logger, so messages show up with vLLM's own log handler.
logger = logging.getLogger("vllm.plugins.patent_risk_cpu_lora")


# --------------------------------------------------------------------------
# Installation
# --------------------------------------------------------------------------


def stock_ops() -> dict[str, Any]:
    """The stock functions, whether or not the fast ops are installed."""
    return {name: _stock(name) for name in REPLACED_OPS}


def _skip_reason() -> str | None:
    if os.environ.get(DISABLE_ENV, "").strip() == "1":
        return f"{DISABLE_ENV}=1"
    import vllm

    version = getattr(vllm, "__version__", None)
    if version != PINNED_VLLM_VERSION:
        return (
            f"vLLM {version} is not the pinned {PINNED_VLLM_VERSION} these ops "
            "were written against"
        )
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return f"platform is {getattr(current_platform, 'device_name', '?')}, not CPU"
    return None


def is_installed() -> bool:
    """True when every target module holds the fast ops."""
    import sys

    for mod_name in _TARGET_MODULES:
        mod = sys.modules.get(mod_name)
        if mod is None:
            return False
        if not all(getattr(getattr(mod, n, None), _FAST_MARK, False) for n in REPLACED_OPS):
            return False
    return True


def install(mode: str | None = None) -> bool:
    """Replace vLLM's CPU LoRA ops by the grouped-matmul ones.

    ``mode`` (default: ``$PATENT_RISK_LORA_OPS_MODE`` or ``exact``) picks the
    per-group product, see :data:`MODE_ENV`.

    Patches ``vllm.lora.ops.torch_ops.lora_ops``, ``vllm.lora.ops.torch_ops``
    and ``vllm.lora.punica_wrapper.punica_cpu``.  Idempotent.  Does nothing
    (and logs why) when ``PATENT_RISK_STOCK_LORA_OPS=1``, when vLLM is not
    version :data:`PINNED_VLLM_VERSION`, or when the platform is not CPU.
    Returns True when the fast ops are in place afterwards.
    """
    reason = _skip_reason()
    if reason is not None:
        logger.info("Keeping vLLM's stock CPU LoRA ops: %s.", reason)
        return False

    import importlib

    mode = mode or os.environ.get(MODE_ENV, "").strip() or DEFAULT_MODE
    if mode not in MODES:
        logger.warning("Ignoring %s=%r (not one of %s).", MODE_ENV, mode, MODES)
        mode = DEFAULT_MODE
    set_mode(mode)
    modules = [importlib.import_module(m) for m in _TARGET_MODULES]
    already = is_installed()
    for name in REPLACED_OPS:
        if name not in _STOCK:
            current = getattr(modules[0], name)
            if not getattr(current, _FAST_MARK, False):
                _STOCK[name] = current
        for mod in modules:
            setattr(mod, name, getattr(cpu_lora_ops, name))
    if not already:
        logger.info(
            "Installed grouped CPU LoRA ops (%s, mode %s) in process %d.",
            ", ".join(REPLACED_OPS),
            mode,
            os.getpid(),
        )
    return True


def uninstall() -> None:
    """Put the stock ops back (if they were captured)."""
    import sys

    for mod_name in _TARGET_MODULES:
        mod = sys.modules.get(mod_name)
        if mod is None:
            continue
        for name, fn in _STOCK.items():
            setattr(mod, name, fn)


def register() -> None:
    """Entry point of the ``vllm.general_plugins`` group (runs in every process)."""
    try:
        install()
    except Exception:  # never break engine start-up over an optimisation
        logger.exception("Could not install the fast CPU LoRA ops; keeping stock ops.")
