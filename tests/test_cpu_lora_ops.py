"""The grouped-matmul CPU LoRA ops (runtime/cpu_lora.py) against vLLM's stock ops.

Pure torch, no engine.  The stock ops index ``weights[-1]`` for a token whose
lora index is -1 (no adapter), i.e. the last adapter slot; the fast ops give
such tokens no contribution.  Both agree when the last slot is empty (zero),
so the stock reference always runs on the weights with a zero slot appended.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from patent_risk.runtime import cpu_lora  # noqa: E402

OPS_MODULES = cpu_lora._TARGET_MODULES
HIDDEN = 48
OUT_SLICES = (40, 24, 24)  # e.g. q, k, v


@pytest.fixture(autouse=True)
def _restore_vllm_modules(monkeypatch):
    """Each test starts and ends with vLLM's stock ops in every module."""
    import importlib

    stock = cpu_lora.stock_ops()
    for mod_name in OPS_MODULES:
        mod = importlib.import_module(mod_name)
        for name in cpu_lora.REPLACED_OPS:
            # monkeypatch restores the original attribute after the test
            monkeypatch.setattr(mod, name, stock[name])
    monkeypatch.delenv(cpu_lora.DISABLE_ENV, raising=False)
    monkeypatch.delenv(cpu_lora.MODE_ENV, raising=False)
    mode = cpu_lora.get_mode()
    yield
    cpu_lora.set_mode(mode)


def _stock():
    return cpu_lora.stock_ops()


def _check_all_modes(run_fast, reference):
    """run_fast() under each mode equals reference: bitwise in ``exact`` mode,
    up to float32 rounding in ``matmul`` mode."""
    previous = cpu_lora.get_mode()
    try:
        for mode in cpu_lora.MODES:
            cpu_lora.set_mode(mode)
            got = run_fast()
            if mode == "exact":
                torch.testing.assert_close(got, reference, rtol=0, atol=0, msg=mode)
            else:
                torch.testing.assert_close(got, reference)
    finally:
        cpu_lora.set_mode(previous)
    return got


def _with_zero_slot(w):
    return torch.cat([w, torch.zeros_like(w[:1])], dim=0)


def _indices(num_tokens, num_loras, pattern, gen):
    if pattern == "one":
        return torch.full((num_tokens,), num_loras - 1, dtype=torch.long)
    if pattern == "none":
        return torch.full((num_tokens,), -1, dtype=torch.long)
    if pattern == "mixed":  # random adapters and -1 tokens, interleaved
        return torch.randint(-1, num_loras, (num_tokens,), generator=gen)
    if pattern == "runs":  # contiguous runs, an adapter appearing twice
        idx = torch.empty(num_tokens, dtype=torch.long)
        cuts = sorted(torch.randint(0, num_tokens + 1, (3,), generator=gen).tolist())
        vals = [0, -1, num_loras - 1, 0]
        bounds = [0, *cuts, num_tokens]
        for v, (s, e) in zip(vals, itertools.pairwise(bounds)):
            idx[s:e] = v
        return idx
    raise ValueError(pattern)


def _segments(idx):
    """sgmv metadata as vLLM's compute_meta builds it (runs of equal indices)."""
    lora_indices, seq_lens = torch.unique_consecutive(idx, return_counts=True)
    starts = torch.zeros_like(seq_lens)
    starts[1:] = torch.cumsum(seq_lens, 0)[:-1]
    return (
        starts,
        seq_lens,
        lora_indices,
        lora_indices.numel(),
        int(seq_lens.max()) if seq_lens.numel() else 0,
        int(seq_lens.sum()),
    )


NUM_TOKENS = (1, 5, 33)
RANKS = (8, 16)
PATTERNS = ("one", "none", "mixed", "runs")
NUM_LORAS = (1, 3)


def _cases_gen():
    for t, r, p, n in itertools.product(NUM_TOKENS, RANKS, PATTERNS, NUM_LORAS):
        yield pytest.param(t, r, p, n, id=f"T{t}-r{r}-{p}-L{n}")


def _cases():
    return list(_cases_gen())


@pytest.mark.parametrize(("num_tokens", "rank", "pattern", "num_loras"), _cases())
@pytest.mark.parametrize("kind", ["bgmv", "sgmv"])
@pytest.mark.parametrize("scaling", [1.0, 0.5])
@pytest.mark.parametrize("extra_cols", [0, 8])  # vLLM's [T, rank] buffer; a wider one
def test_shrink_matches_stock(num_tokens, rank, pattern, num_loras, kind, scaling, extra_cols):
    gen = torch.Generator().manual_seed(num_tokens * 100 + rank + num_loras)
    x = torch.randn(num_tokens, HIDDEN, generator=gen)
    w = torch.randn(num_loras, 1, rank, HIDDEN, generator=gen)  # lora_a_stacked
    idx = _indices(num_tokens, num_loras, pattern, gen)
    base = torch.full((num_tokens, rank + extra_cols), 7.0)
    out_ref = base.clone()
    x_before = x.clone()
    meta = _segments(idx)

    def fast():
        out = base.clone()
        if kind == "bgmv":
            cpu_lora.bgmv_shrink(x, w, out, idx, scaling)
        else:
            cpu_lora.sgmv_shrink(x, w, out, *meta, scaling)
        return out

    if kind == "bgmv":
        _stock()["bgmv_shrink"](x, _with_zero_slot(w), out_ref, idx, scaling)
    else:
        _stock()["sgmv_shrink"](x, _with_zero_slot(w), out_ref, *meta, scaling)
    out_fast = _check_all_modes(fast, out_ref)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)
    # -1 tokens: no LoRA contribution (shrink overwrites -> zero rows)
    assert torch.all(out_fast[idx < 0, :rank] == 0)


@pytest.mark.parametrize(("num_tokens", "rank", "pattern", "num_loras"), _cases())
@pytest.mark.parametrize("kind", ["bgmv", "sgmv"])
@pytest.mark.parametrize("add_inputs", [True, False])
@pytest.mark.parametrize("out_width", [32, 40, 56])  # narrower, equal, padded
def test_expand_matches_stock(
    num_tokens, rank, pattern, num_loras, kind, add_inputs, out_width
):
    gen = torch.Generator().manual_seed(num_tokens * 100 + rank + num_loras + 1)
    out_features = 40
    x = torch.randn(num_tokens, rank, generator=gen)
    w = torch.randn(num_loras, 1, out_features, rank, generator=gen)  # lora_b
    idx = _indices(num_tokens, num_loras, pattern, gen)
    base = torch.randn(num_tokens, out_width, generator=gen)
    out_ref = base.clone()
    meta = _segments(idx)

    def fast():
        out = base.clone()
        if kind == "bgmv":
            cpu_lora.bgmv_expand(x, w, out, idx, add_inputs)
        else:
            cpu_lora.sgmv_expand(x, w, out, *meta, add_inputs)
        return out

    if kind == "bgmv":
        _stock()["bgmv_expand"](x, _with_zero_slot(w), out_ref, idx, add_inputs)
    else:
        _stock()["sgmv_expand"](x, _with_zero_slot(w), out_ref, *meta, add_inputs)
    out_fast = _check_all_modes(fast, out_ref)
    if add_inputs:  # -1 tokens are left untouched
        torch.testing.assert_close(out_fast[idx < 0], base[idx < 0], rtol=0, atol=0)


@pytest.mark.parametrize(("num_tokens", "rank", "pattern", "num_loras"), _cases())
@pytest.mark.parametrize("kind", ["bgmv", "sgmv"])
@pytest.mark.parametrize("add_inputs", [True, False])
def test_expand_slice_matches_stock(num_tokens, rank, pattern, num_loras, kind, add_inputs):
    gen = torch.Generator().manual_seed(num_tokens * 100 + rank + num_loras + 2)
    base = torch.randn(num_tokens, sum(OUT_SLICES), generator=gen)
    out_ref = base.clone()
    idx = _indices(num_tokens, num_loras, pattern, gen)
    meta = _segments(idx)
    slices = []
    offset = 0
    for size in OUT_SLICES:
        x = torch.randn(num_tokens, rank, generator=gen)
        w = torch.randn(num_loras, 1, size, rank, generator=gen)
        slices.append((x, w, offset, size))
        if kind == "bgmv":
            _stock()["bgmv_expand_slice"](
                x, _with_zero_slot(w), out_ref, idx, offset, size, add_inputs
            )
        else:
            _stock()["sgmv_expand_slice"](
                x, _with_zero_slot(w), out_ref, *meta, offset, size, add_inputs
            )
        offset += size

    def fast():
        out = base.clone()
        for x, w, off, size in slices:
            if kind == "bgmv":
                cpu_lora.bgmv_expand_slice(x, w, out, idx, off, size, add_inputs)
            else:
                cpu_lora.sgmv_expand_slice(x, w, out, *meta, off, size, add_inputs)
        return out

    out_fast = _check_all_modes(fast, out_ref)
    if add_inputs:
        torch.testing.assert_close(out_fast[idx < 0], base[idx < 0], rtol=0, atol=0)


def test_three_dim_weights_and_single_row_broadcast():
    """3-D weight stacks, and bgmv_expand's one-row broadcast rule, as stock."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, generator=gen)
    w = torch.randn(2, 20, 8, generator=gen)
    idx = torch.tensor([1])
    base = torch.randn(4, 20, generator=gen)
    out_ref = base.clone()
    _stock()["bgmv_expand"](x, w, out_ref, idx, True)

    def fast():
        out = base.clone()
        cpu_lora.bgmv_expand(x, w, out, idx, True)
        return out

    _check_all_modes(fast, out_ref)


def test_minus_one_gets_nothing_even_when_all_slots_are_filled():
    """Stock would apply the last adapter to -1 tokens; the fast ops don't."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, HIDDEN, generator=gen)
    w = torch.randn(2, 1, 8, HIDDEN, generator=gen)
    idx = torch.tensor([0, -1, 1, -1, 1, 0])
    out = torch.empty(6, 8)
    cpu_lora.bgmv_shrink(x, w, out, idx, 1.0)
    assert torch.all(out[idx < 0] == 0)
    torch.testing.assert_close(out[0], x[0] @ w[0, 0].T)
    torch.testing.assert_close(out[2], x[2] @ w[1, 0].T)


def test_punica_wrapper_end_to_end():
    """PunicaWrapperCPU.add_lora_linear (sgmv path) and add_lora_logits (bgmv
    path) give the same result with the ops installed as with the stock ops."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    gen = torch.Generator().manual_seed(2)
    num_tokens, rank, num_loras = 19, 16, 3
    idx = torch.tensor([0] * 7 + [-1] * 3 + [2] * 5 + [0] * 4)
    x = torch.randn(num_tokens, HIDDEN, generator=gen)
    # last slot empty (zero), as in vLLM while a slot is free
    a = tuple(
        _with_zero_slot(torch.randn(num_loras, 1, rank, HIDDEN, generator=gen))
        for _ in OUT_SLICES
    )
    b = tuple(
        _with_zero_slot(torch.randn(num_loras, 1, s, rank, generator=gen))
        for s in OUT_SLICES
    )
    base = torch.randn(num_tokens, sum(OUT_SLICES), generator=gen)

    wrapper = PunicaWrapperCPU(256, 8, "cpu")
    wrapper._update_prefill_metadata(idx)
    wrapper._token_lora_indices[:num_tokens].copy_(idx)
    wrapper._sampler_indices[:num_tokens].copy_(idx)
    wrapper.indices_len[:] = [num_tokens] * len(wrapper.indices_len)
    wrapper.is_prefill = True

    def run():
        y = base.clone()
        wrapper.add_lora_linear(y, x, a, b, 2.0, OUT_SLICES)
        logits = base.clone()
        wrapper.add_lora_logits(logits, x, a[0], b[0], 0.5)
        return y, logits

    y_ref, logits_ref = run()
    assert cpu_lora.install(mode="exact") is True
    y_fast, logits_fast = run()
    torch.testing.assert_close(y_fast, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(logits_fast, logits_ref, rtol=0, atol=0)
    assert not torch.equal(y_fast, base)  # the adapters did something
    try:
        assert cpu_lora.install(mode="matmul") is True
        y_fast, logits_fast = run()
    finally:
        cpu_lora.set_mode(cpu_lora.DEFAULT_MODE)
    # two chained fp32 products summed in another order: float32 rounding only
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits_fast, logits_ref, rtol=1e-4, atol=1e-4)


def _module_ops(mod_name):
    import importlib

    mod = importlib.import_module(mod_name)
    return {name: getattr(mod, name) for name in cpu_lora.REPLACED_OPS}


def test_install_patches_all_modules_and_is_idempotent():
    stock = cpu_lora.stock_ops()
    assert not cpu_lora.is_installed()
    assert cpu_lora.install() is True
    first = {m: _module_ops(m) for m in OPS_MODULES}
    assert cpu_lora.install() is True
    assert {m: _module_ops(m) for m in OPS_MODULES} == first
    for mod_name in OPS_MODULES:
        for name, fn in first[mod_name].items():
            assert fn is getattr(cpu_lora, name), (mod_name, name)
    assert cpu_lora.is_installed()
    # the stock functions are still known after installing twice
    assert cpu_lora.stock_ops() == stock
    cpu_lora.uninstall()
    assert not cpu_lora.is_installed()
    for mod_name in OPS_MODULES:
        assert _module_ops(mod_name) == stock


def test_version_pin_respected(monkeypatch):
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.31.9")
    assert cpu_lora.install() is False
    assert not cpu_lora.is_installed()
    for mod_name in OPS_MODULES:
        assert _module_ops(mod_name) == cpu_lora.stock_ops()


def test_mode_env(monkeypatch):
    monkeypatch.setenv(cpu_lora.MODE_ENV, "matmul")
    assert cpu_lora.install() is True
    assert cpu_lora.get_mode() == "matmul"
    monkeypatch.setenv(cpu_lora.MODE_ENV, "bogus")
    assert cpu_lora.install() is True
    assert cpu_lora.get_mode() == cpu_lora.DEFAULT_MODE == "exact"
    with pytest.raises(ValueError):
        cpu_lora.set_mode("bogus")


def test_env_var_disables(monkeypatch):
    monkeypatch.setenv(cpu_lora.DISABLE_ENV, "1")
    assert cpu_lora.install() is False
    assert not cpu_lora.is_installed()


def test_non_cpu_platform_keeps_stock(monkeypatch):
    from vllm.platforms import current_platform

    monkeypatch.setattr(type(current_platform), "is_cpu", lambda self: False)
    assert cpu_lora.install() is False
    assert not cpu_lora.is_installed()


def test_register_calls_install_and_never_raises(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_lora, "install", lambda: calls.append(1) or True)
    cpu_lora.register()
    assert calls == [1]

    def boom():
        raise RuntimeError("boom")

    monkeypatch.setattr(cpu_lora, "install", boom)
    cpu_lora.register()  # logged, not raised


def test_entry_point_registered():
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="vllm.general_plugins") if ep.value == "patent_risk.runtime.cpu_lora:register"]
    if not eps:
        missing = "no vllm.general_plugins entry point patent_risk.runtime.cpu_lora:register: package not (re)installed"
        if os.environ.get("CI"):  # CI installs the package, so the plugin must be there
            pytest.fail(missing)
        pytest.skip(missing)
    plugin = eps[0].load()
    assert callable(plugin) and plugin is cpu_lora.register


def test_import_is_light():
    code = (
        "import sys, runtime.cpu_lora; "
        "heavy = [m for m in ('torch', 'vllm') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
