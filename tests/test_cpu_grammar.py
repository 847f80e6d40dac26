"""The CPU bitmask path (runtime/cpu_grammar.py) against xgrammar's own CPU kernel: the same logits bit for bit on
rows that ban almost every word (JSON structure), rows that allow almost every word (inside a string), both in
one batch, with and without row indices; a layout it does not take (a vocabulary of partial words, mostly mixed
words) is left to xgrammar, untouched; and the swap of vLLM's ``xgr`` that sends CPU tensors to it."""
from __future__ import annotations

import pytest
import torch

from patent_risk.runtime import cpu_grammar

VOCAB = 262_144  # Gemma 3's vocabulary: 8,192 words of 32 tokens


def _mask(rows: int, words: int, kinds: list[str], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    bm = torch.randint(-2**31, 2**31 - 1, (rows, words), generator=g, dtype=torch.int64).to(torch.int32)
    r = torch.rand(rows, words, generator=g)
    for i, kind in enumerate(kinds):
        if kind == "structure":
            bm[i][r[i] < 0.999] = 0
        elif kind == "string":
            bm[i][r[i] < 0.97] = -1
            bm[i][(r[i] >= 0.97) & (r[i] < 0.98)] = 0
    return bm


@pytest.mark.parametrize("kinds", [["structure"] * 4, ["string"] * 4, ["structure", "string", "string", "structure"]])
@pytest.mark.parametrize("indices", [None, [0, 2, 3], [3, 1]])
def test_same_logits_as_xgrammar(kinds, indices):
    from xgrammar.kernels.apply_token_bitmask_inplace_cpu import apply_token_bitmask_inplace_cpu

    bitmask = _mask(4, VOCAB // 32, kinds, seed=len(kinds[0]))
    bitmask[0, 5] = 1 << 7  # row 0 allows token 5 * 32 + 7 in a word it otherwise bans
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(3))
    ours, theirs = logits.clone(), logits.clone()
    assert cpu_grammar.apply_bitmask_cpu(ours, bitmask, indices) is True
    apply_token_bitmask_inplace_cpu(theirs, bitmask, indices=indices)
    assert torch.equal(ours, theirs)
    assert torch.isinf(ours).any() and not torch.isinf(ours).all()
    for r in range(4):
        if indices is not None and r not in indices:
            assert torch.equal(ours[r], logits[r])  # rows not named are left alone
    if indices is None or 0 in indices:
        assert not torch.isinf(ours[0, 5 * 32 + 7]) and torch.isinf(ours[0, 5 * 32 + 6])


@pytest.mark.parametrize("indices", [None, [0, 2, 3], [3, 1]])
def test_rows_that_allow_most_words_go_to_xgrammar_when_asked(indices):
    from xgrammar.kernels.apply_token_bitmask_inplace_cpu import apply_token_bitmask_inplace_cpu

    kinds = ["structure", "string", "string", "structure"]
    bitmask = _mask(4, VOCAB // 32, kinds, seed=9)
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(4))
    ours, theirs = logits.clone(), logits.clone()
    handed: list[list[int]] = []

    def stock(rows):
        handed.append(rows)
        apply_token_bitmask_inplace_cpu(ours, bitmask, indices=rows)

    assert cpu_grammar.apply_bitmask_cpu(ours, bitmask, indices, mostly_allowed=stock) is True
    apply_token_bitmask_inplace_cpu(theirs, bitmask, indices=indices)
    assert torch.equal(ours, theirs)
    assert handed == [[r for r in (indices if indices is not None else range(4)) if kinds[r] == "string"]]


def test_layouts_it_does_not_take_are_left_to_xgrammar():
    logits = torch.randn(2, 1000)
    before = logits.clone()
    assert cpu_grammar.apply_bitmask_cpu(logits, torch.zeros(2, 32, dtype=torch.int32)) is False  # 1000 is not whole words
    random_bits = _mask(2, VOCAB // 32, ["random", "random"], seed=1)  # almost every word mixed
    big = torch.randn(2, VOCAB)
    big_before = big.clone()
    assert cpu_grammar.apply_bitmask_cpu(big, random_bits) is False
    assert torch.equal(logits, before) and torch.equal(big, big_before)


def test_the_swap_sends_cpu_tensors_here_and_keeps_the_rest(monkeypatch):
    import vllm.v1.structured_output.utils as utils
    import xgrammar as real

    monkeypatch.delenv(cpu_grammar.DISABLE_ENV, raising=False)
    cpu_grammar.uninstall()  # the plugin may have installed it when vLLM was imported
    try:
        assert cpu_grammar.install() is True and cpu_grammar.is_installed()
        assert cpu_grammar.install() is True and utils.xgr._real is real  # idempotent
        calls = []
        monkeypatch.setattr(cpu_grammar, "apply_bitmask_cpu", lambda *a, **k: calls.append(a) or callable(k["mostly_allowed"]))
        logits, bitmask = torch.randn(2, 64), torch.zeros(2, 2, dtype=torch.int32)
        utils.xgr.apply_token_bitmask_inplace(logits, bitmask, indices=torch.tensor([1]))
        assert len(calls) == 1 and calls[0][2] == [1]
        assert utils.xgr.allocate_token_bitmask is real.allocate_token_bitmask  # everything else is xgrammar's
        assert cpu_grammar.is_installed()  # and using it did not unwrap it (vLLM's LazyLoader would have)
    finally:
        cpu_grammar.uninstall()
    assert not cpu_grammar.is_installed() and not isinstance(utils.xgr, cpu_grammar._XgrammarOnCpu)
    monkeypatch.setenv(cpu_grammar.DISABLE_ENV, "1")
    assert cpu_grammar.install() is False and not cpu_grammar.is_installed()
