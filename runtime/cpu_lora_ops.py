"""The grouped CPU LoRA ops that runtime/cpu_lora.py installs into vLLM (its text says why and how), with
their two modes and the stock ops they fall back to.

The replacements keep the stock signatures and the stock output handling verbatim; only the computation of
the per-token LoRA product changes: the tokens are grouped by adapter and each group is multiplied by its
adapter's matrix in one matmul (no per-token weight gather). torch and vLLM are imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: ``PATENT_RISK_LORA_OPS_MODE``: how each adapter's group of tokens is
#: multiplied.
#:
#: ``exact`` (default): a batched mat-vec against the adapter's matrix
#: broadcast over the group (``bmm`` with a stride-0 weight: no copy).  This
#: is per token the same kernel call as the stock einsum, so results are
#: bitwise equal to vLLM's stock ops (and don't depend on the batch mix).
#: ``matmul``: one ``mm`` per group; faster still, but float32 sums in another
#: order, so greedy outputs can differ from stock at near-ties.
MODE_ENV = "PATENT_RISK_LORA_OPS_MODE"
MODES = ("exact", "matmul")
DEFAULT_MODE = "exact"
_MODE = DEFAULT_MODE

REPLACED_OPS = (
    "bgmv_shrink",
    "bgmv_expand",
    "bgmv_expand_slice",
    "sgmv_shrink",
    "sgmv_expand",
    "sgmv_expand_slice",
)

# Modules that hold the op names: the defining module, the package that
# re-exports them, and punica_cpu, which imported them by name.
_TARGET_MODULES = (
    "vllm.lora.ops.torch_ops.lora_ops",
    "vllm.lora.ops.torch_ops",
    "vllm.lora.punica_wrapper.punica_cpu",
)

# name -> the stock function, captured on first install (for uninstall/tests).
_STOCK: dict[str, Any] = {}
_FAST_MARK = "_patent_risk_fast_lora_op"

# --------------------------------------------------------------------------
# Grouping of tokens by adapter
# --------------------------------------------------------------------------
# A "group" is (lora_index, rows) where rows is None (all tokens), a slice
# (a contiguous run of tokens) or a 1-D int64 tensor of token positions.


def _groups_from_token_indices(indices: torch.Tensor) -> list[tuple[int, Any]]:
    """Groups of tokens sharing a non-negative lora index (per-token indices)."""
    import torch

    if indices.numel() == 0:
        return []
    lo, hi = torch.aminmax(indices)
    lo_i, hi_i = int(lo), int(hi)
    if lo_i == hi_i:  # the common case: one adapter (or none) for every token
        return [] if lo_i < 0 else [(lo_i, None)]
    groups: list[tuple[int, Any]] = []
    for u in torch.unique(indices).tolist():
        if u < 0:  # -1: no adapter
            continue
        groups.append((u, torch.nonzero(indices == u).squeeze(1)))
    return groups


def _groups_from_segments(
    lora_indices_tensor: torch.Tensor, seq_len_tensor: torch.Tensor, num_tokens: int
) -> list[tuple[int, Any]] | None:
    """Groups from sgmv segments; None when they don't tile ``num_tokens``."""
    import torch

    loras = lora_indices_tensor.tolist()
    lens = seq_len_tensor.tolist()
    if len(loras) != len(lens) or sum(lens) != num_tokens or any(n < 0 for n in lens):
        return None
    runs: dict[int, list[tuple[int, int]]] = {}
    start = 0
    for lora, n in zip(loras, lens):
        if n > 0 and lora >= 0:
            runs.setdefault(lora, []).append((start, start + n))
        start += n
    groups: list[tuple[int, Any]] = []
    for lora, spans in runs.items():
        if len(spans) == 1:
            s, e = spans[0]
            groups.append((lora, None if (s == 0 and e == num_tokens) else slice(s, e)))
        else:
            rows = torch.cat([torch.arange(s, e, dtype=torch.long) for s, e in spans])
            groups.append((lora, rows.to(lora_indices_tensor.device)))
    return groups


def _as_matrices(weights: torch.Tensor) -> torch.Tensor:
    """[loras, 1, out, in] or [loras, out, in] -> [loras, out, in] (as stock)."""
    if weights.dim() == 4:
        # stock: weights[idx] -> [T, 1, out, in] -> squeeze(dim=1)
        weights = weights.squeeze(dim=1)
    if weights.dim() != 3:
        raise ValueError(
            f"LoRA weights must be [loras, (1,) out, in], got {tuple(weights.shape)}"
        )
    return weights


def _lora_product(
    inputs: torch.Tensor,
    weights: torch.Tensor,
    groups: list[tuple[int, Any]],
    dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """outputs[t] = inputs[t] @ weights[lora(t)].T, zero rows for no adapter.

    One matmul per adapter present, on that adapter's rows only, against that
    adapter's matrix (never a per-token copy of the weights).  ``out``: a
    contiguous [tokens, out_features] tensor to write into, used only when one
    adapter covers every token (the caller checks the shape).
    """
    import torch

    mats = _as_matrices(weights)
    x = inputs.to(dtype=dtype)
    num_tokens, out_features = x.shape[0], mats.shape[1]
    exact = _MODE == "exact"

    def product(rows_x: torch.Tensor, lora: int, dst=None) -> torch.Tensor:
        w_t = mats[lora].to(dtype=dtype).t()  # [in, out], a view
        if exact:
            # Batched mat-vec against the same matrix broadcast over the batch
            # (stride 0: no copy).  Per row this is the very kernel call the
            # stock einsum makes, so results are bitwise equal to stock.
            n, k = rows_x.shape
            w_b = w_t.expand(n, k, out_features)
            if dst is not None:
                torch.bmm(rows_x.unsqueeze(1), w_b, out=dst.unsqueeze(1))
                return dst
            return torch.bmm(rows_x.unsqueeze(1), w_b).squeeze(1)
        if dst is not None:
            return torch.mm(rows_x, w_t, out=dst)
        return torch.mm(rows_x, w_t)

    if len(groups) == 1 and groups[0][1] is None:
        return product(x, groups[0][0], out)
    outputs = x.new_zeros((num_tokens, out_features))
    for lora, rows in groups:
        if isinstance(rows, slice):
            outputs[rows] = product(x[rows], lora)
        else:
            outputs.index_copy_(0, rows, product(x.index_select(0, rows), lora))
    return outputs


def _can_use_fast(inputs: torch.Tensor, lora_indices_tensor: torch.Tensor) -> bool:
    import torch

    if torch.compiler.is_compiling():  # data-dependent grouping: keep stock
        return False
    return (
        inputs.dim() == 2
        and lora_indices_tensor.dim() == 1
        and inputs.shape[0] == lora_indices_tensor.shape[0]
    )


# --------------------------------------------------------------------------
# The ops (same signatures as vllm 0.32.0 torch_ops/lora_ops.py)
# --------------------------------------------------------------------------


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
):
    if not _can_use_fast(inputs, lora_indices_tensor):
        return _stock("bgmv_shrink")(
            inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling
        )
    groups = _groups_from_token_indices(lora_indices_tensor)
    _shrink(inputs, lora_b_weights, output_tensor, groups, scaling)


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
):
    if not _can_use_fast(inputs, lora_indices_tensor):
        return _stock("bgmv_expand")(
            inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs
        )
    groups = _groups_from_token_indices(lora_indices_tensor)
    outputs = _lora_product(inputs, lora_b_weights, groups, output_tensor.dtype)
    _expand_tail(outputs, output_tensor, add_inputs)


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
):
    if not _can_use_fast(inputs, lora_indices_tensor):
        return _stock("bgmv_expand_slice")(
            inputs,
            lora_b_weights,
            output_tensor,
            lora_indices_tensor,
            slice_offset,
            slice_size,
            add_inputs,
        )
    groups = _groups_from_token_indices(lora_indices_tensor)
    outputs = _lora_product(inputs, lora_b_weights, groups, output_tensor.dtype)
    _expand_slice_tail(outputs, output_tensor, slice_offset, slice_size, add_inputs)


def sgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
):
    groups = _sgmv_groups(inputs, seq_len_tensor, lora_indices_tensor)
    if groups is None:
        import torch

        exploded = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
        return bgmv_shrink(inputs, lora_a_weights, output_tensor, exploded, scaling)
    _shrink(inputs, lora_a_weights, output_tensor, groups, scaling)


def sgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
):
    groups = _sgmv_groups(inputs, seq_len_tensor, lora_indices_tensor)
    if groups is None:
        import torch

        exploded = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
        return bgmv_expand(inputs, lora_b_weights, output_tensor, exploded, add_inputs)
    outputs = _lora_product(inputs, lora_b_weights, groups, output_tensor.dtype)
    _expand_tail(outputs, output_tensor, add_inputs)


def sgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
):
    groups = _sgmv_groups(inputs, seq_len_tensor, lora_indices_tensor)
    if groups is None:
        import torch

        exploded = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
        return bgmv_expand_slice(
            inputs,
            lora_b_weights,
            output_tensor,
            exploded,
            slice_offset,
            slice_size,
            add_inputs,
        )
    outputs = _lora_product(inputs, lora_b_weights, groups, output_tensor.dtype)
    _expand_slice_tail(outputs, output_tensor, slice_offset, slice_size, add_inputs)


def _sgmv_groups(
    inputs: torch.Tensor, seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor
) -> list[tuple[int, Any]] | None:
    import torch

    if torch.compiler.is_compiling() or inputs.dim() != 2:
        return None
    if seq_len_tensor.dim() != 1 or lora_indices_tensor.dim() != 1:
        return None
    return _groups_from_segments(lora_indices_tensor, seq_len_tensor, inputs.shape[0])


def _shrink(inputs, weights, output_tensor, groups, scaling):
    dtype = output_tensor.dtype
    num_tokens, rank = inputs.shape[0], _as_matrices(weights).shape[1]
    if (
        len(groups) == 1
        and groups[0][1] is None
        and output_tensor.shape == (num_tokens, rank)
        and output_tensor.is_contiguous()
    ):
        # The usual case (one adapter, vLLM's [tokens, rank] buffer): write the
        # product straight into the output, then scale in place -- the same
        # float operations as the stock tail below, minus two temporaries.
        _lora_product(inputs, weights, groups, dtype, out=output_tensor)
        if scaling != 1.0:
            output_tensor.mul_(scaling)
        return
    outputs = _lora_product(inputs, weights, groups, dtype)
    _shrink_tail(outputs, output_tensor, scaling)


# Output handling: as in the stock ops.


def _shrink_tail(outputs, output_tensor, scaling):
    if scaling == 1.0:  # 1.0 * x == x: skip the multiply (vLLM passes 1.0)
        output_tensor[:, : outputs.shape[1]] = outputs
    else:
        output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]


def _expand_tail(outputs, output_tensor, add_inputs):
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1

    # LoRA adapter and model may add different amounts of padding to output
    common_len = min(outputs.shape[1], output_tensor.shape[1])

    if add_inputs:
        output_tensor[:, :common_len] += outputs[:limit, :common_len]
    else:
        output_tensor[:, :common_len] = outputs[:limit, :common_len]


def _expand_slice_tail(outputs, output_tensor, slice_offset, slice_size, add_inputs):
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs[:]
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs[:]


for _name in REPLACED_OPS:
    setattr(globals()[_name], _FAST_MARK, True)
del _name


def _stock(name: str):
    """The stock op (captured at install, else read from vLLM's module)."""
    fn = _STOCK.get(name)
    if fn is None:
        import importlib

        fn = getattr(importlib.import_module(_TARGET_MODULES[0]), name)
        if getattr(fn, _FAST_MARK, False):  # pragma: no cover - defensive
            raise RuntimeError(f"stock {name} not captured")
    return fn


def get_mode() -> str:
    return _MODE


def set_mode(mode: str) -> None:
    """Select ``exact`` or ``matmul`` (see :data:`MODE_ENV`)."""
    global _MODE
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV} must be one of {MODES}, got {mode!r}")
    _MODE = mode
