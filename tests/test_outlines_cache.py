"""outlines' compiled-index cache answers every process (runtime/outlines_cache.py, a vLLM general plugin): the
key vLLM 0.32 gives a vocabulary is a hash of a repr whose order is random per process (issue 14)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from patent_risk.runtime import outlines_cache
from patent_risk.runtime.outlines_cache import vocabulary_key

from .conftest import ROOT


def test_the_key_is_the_content_in_any_order():
    a = {b"a": [3], b"\xeb": [7, 5], b" b": [2]}
    b = dict(reversed(list(a.items())))
    b[b"\xeb"] = [5, 7]
    assert vocabulary_key(1, a) == vocabulary_key(1, b)
    assert vocabulary_key(106, a) != vocabulary_key(1, a)  # another eos
    assert vocabulary_key(1, {**a, b"c": [9]}) != vocabulary_key(1, a)
    assert vocabulary_key(1, {b"ab": [1], b"c": [2]}) != vocabulary_key(1, {b"a": [1], b"bc": [2]})


_PROBE = """
import json, sys
from transformers import AutoTokenizer
from vllm.v1.structured_output import utils
stock = utils.get_outlines_vocabulary
from vllm.plugins import load_general_plugins
load_general_plugins()  # as every vLLM process does: the entry points of vllm.general_plugins
patched = utils.get_outlines_vocabulary
tok = lambda: AutoTokenizer.from_pretrained(sys.argv[1])
print(json.dumps({"installed": patched is not stock, "patched": str(patched(tok())._hash),
                  "stock": str(stock(tok())._hash)}))
"""


def test_every_process_computes_the_same_key_for_gemma(gemma_model):
    """Two fresh interpreters with Gemma 3's tokenizer: vLLM's own key differs between them (the trap that made
    the disk cache miss in every new process), the plugin's is the same."""
    env = {k: v for k, v in os.environ.items() if k != outlines_cache.DISABLE_ENV}
    probes = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _PROBE, str(gemma_model)], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        probes.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if not probes[0]["installed"]:
        missing = "no vllm.general_plugins entry point patent_risk.runtime.outlines_cache:register: package not (re)installed"
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    assert probes[0]["patched"] == probes[1]["patched"]
    assert probes[0]["stock"] != probes[1]["stock"]


def test_install_replaces_the_function_in_both_modules():
    from vllm.v1.structured_output import backend_outlines, utils

    saved = utils.get_outlines_vocabulary, backend_outlines.get_outlines_vocabulary
    try:
        assert outlines_cache.install() and outlines_cache.is_installed()
        assert backend_outlines.get_outlines_vocabulary is outlines_cache.get_outlines_vocabulary
    finally:
        utils.get_outlines_vocabulary, backend_outlines.get_outlines_vocabulary = saved


def _open_fresh_caches_at_once(cache_class, trials: int, threads: int = 2) -> list[str]:
    """``trials`` fresh cache folders, each opened by ``threads`` threads released together, as vLLM's
    get_outlines_cache opens one (open, read the version, clear, write it); the errors raised."""
    import tempfile
    import threading

    errors: list[str] = []
    for _ in range(trials):
        folder = tempfile.mkdtemp(prefix="outlines-race-")
        barrier = threading.Barrier(threads)

        def open_it():
            barrier.wait()
            try:
                cache = cache_class(folder)
                cache.get("__version__")
                cache.clear()
                cache.set("__version__", "x")
            except Exception as exc:  # noqa: BLE001 - counted
                errors.append(repr(exc))

        workers = [threading.Thread(target=open_it) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    return errors


def test_two_threads_opening_a_fresh_cache_at_once_both_succeed():
    """vLLM's class switches the file to WAL on every open; two connections doing it on a fresh file at once
    can get "database is locked" without SQLite's busy wait (stock: 6 of 300 pairs failed here; it failed a
    CI run, the precompile's two threads on a cold cache). The plugin's class opens it again."""
    from vllm.v1.structured_output import utils

    stock = utils.OutlinesDiskCache  # the plugin may have replaced it in this process already
    while getattr(stock, "_patent_risk_retrying", False):
        stock = stock.__mro__[1]
    retrying = outlines_cache.retrying_disk_cache(stock)
    assert retrying is not stock and outlines_cache.retrying_disk_cache(retrying) is retrying
    assert _open_fresh_caches_at_once(retrying, trials=400) == []


def test_every_lookup_of_a_schema_shares_one_index(tmp_path, gemma_tokenizer):
    """vLLM's outlines backend looks the index up once per request; the stock disk cache deserializes a copy
    each time (a v2 index on Gemma's vocabulary is hundreds of megabytes: a copy per request ran the engine
    core out of memory). The plugin's cache hands out one object per key, in another instance too after the
    file is read once, keeps strings as they are, and forgets the oldest beyond MEMO_INDEXES."""
    import outlines_core as oc
    from vllm.v1.structured_output import utils

    stock = utils.OutlinesDiskCache
    while getattr(stock, "_patent_risk_retrying", False):
        stock = stock.__mro__[1]
    cache_class = outlines_cache.retrying_disk_cache(stock)
    vocab = oc.Vocabulary(gemma_tokenizer.eos_token_id, utils._reduced_vocabulary(gemma_tokenizer))
    index = oc.Index('"(높음|애매|낮음)"', vocab)
    writer = cache_class(str(tmp_path))
    writer["k"] = index
    writer["__version__"] = "0.2.14"
    assert writer["k"] is index and writer["__version__"] == "0.2.14"
    reader = cache_class(str(tmp_path))  # another process's view: the file, then memory
    first = reader["k"]
    assert "k" in reader and reader["k"] is first and first is not index
    assert stock(str(tmp_path))["k"] is not stock(str(tmp_path))["k"]  # the stock class: a copy per lookup
    assert first.get_transitions() == index.get_transitions()
    for i in range(outlines_cache.MEMO_INDEXES + 1):
        reader._remember(f"x{i}", index)
    assert "k" not in reader._memo and reader["k"] is not first  # forgotten, read again from the file


def test_the_shared_indexes_are_bounded_by_bytes(tmp_path, gemma_tokenizer, monkeypatch):
    """Free-text schemas' indexes are hundreds of MB each: the memo keeps the newest within a byte budget
    (PATENT_RISK_OUTLINES_MEMO_BYTES; default half the available memory), not only 128 of them. The newest stays
    even when it alone is over the budget; an evicted one is read again from the file."""
    import outlines_core as oc
    from vllm.v1.structured_output import utils

    stock = utils.OutlinesDiskCache
    while getattr(stock, "_patent_risk_retrying", False):
        stock = stock.__mro__[1]
    cache_class = outlines_cache.retrying_disk_cache(stock)
    vocab = oc.Vocabulary(gemma_tokenizer.eos_token_id, utils._reduced_vocabulary(gemma_tokenizer))
    small, large = oc.Index('"(높음|애매|낮음)"', vocab), oc.Index('"[가-힣]{0,3}"', vocab)
    writer = cache_class(str(tmp_path))
    writer["small"], writer["large"] = small, large
    s, l = writer.stored_bytes("small"), writer.stored_bytes("large")
    assert 0 < s < l and writer.stored_bytes("absent") is None
    monkeypatch.setenv("PATENT_RISK_OUTLINES_MEMO_BYTES", str(l + s - 1))
    reader = cache_class(str(tmp_path))
    first = reader["small"]
    assert reader["small"] is first
    reader["large"]
    assert list(reader._memo) == ["large"]  # both would be over the budget: the older went
    assert reader["small"] is not first and list(reader._memo) == ["small"]
    monkeypatch.setenv("PATENT_RISK_OUTLINES_MEMO_BYTES", "1")
    tiny = cache_class(str(tmp_path))
    assert tiny["large"] is tiny["large"]  # over the budget alone, still kept while it is the newest


def test_outlines_grammar_advances_to_the_same_states_without_the_token_lists(gemma_tokenizer, eval_records, monkeypatch):
    """runtime.outlines_advance: vLLM's accept_tokens with advance(t, return_tokens=False) goes through the same
    states as vLLM's own on a real answer, accepts the end, and refuses what vLLM's refuses."""
    import warnings

    from vllm.v1.structured_output.backend_outlines import OutlinesGrammar
    from vllm.v1.structured_output.backend_types import StructuredOutputOptions

    from patent_risk.bench.grammar_step import make_backend
    from patent_risk.runtime import outlines_advance
    from patent_risk.schemas.output import load_schema, specialize
    from patent_risk.schemas.prompt import render_answer

    monkeypatch.delenv(outlines_advance.DISABLE_ENV, raising=False)
    outlines_advance.install()
    assert OutlinesGrammar.accept_tokens is not outlines_advance._STOCK["accept_tokens"]
    rec = eval_records[0]
    schema = specialize(load_schema("v1"), rec.element_ids)
    tokens = gemma_tokenizer(render_answer(rec.label, "v1"), add_special_tokens=False)["input_ids"]
    backend = make_backend("outlines", gemma_tokenizer, 262_144)

    def walk():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = backend.compile_grammar(StructuredOutputOptions.JSON, __import__("json").dumps(schema))
        states = []
        for t in tokens:
            assert g.accept_tokens("r", [t])
            states.append(g.guide.get_state())
        finished = g._is_finished_after([])
        assert not g.accept_tokens("r", [tokens[0]])  # '{' again after the closing brace: refused
        return states, finished, g.accept_tokens("r", [g.eos_token_id]), g.is_terminated()

    try:
        outlines_advance.uninstall()
        assert not outlines_advance.is_installed()
        before = walk()
        assert outlines_advance.install() and outlines_advance.is_installed()
        after = walk()
    finally:
        outlines_advance.install()
    assert after == before and before[1] is True and before[2:] == (True, True)


def test_outlines_masks_are_cached_by_state_with_the_same_bits(gemma_tokenizer, monkeypatch):
    """runtime.outlines_advance's fill_bitmask: at every step of two grammars of one spec the row is bit for bit what
    outlines writes; the second grammar's states that allow most tokens are copied from the cache (hits), those
    that allow few are written by outlines; PATENT_RISK_OUTLINES_MASK_CACHE_MB=0 attaches no cache."""
    import torch
    from vllm.v1.structured_output.backend_types import StructuredOutputOptions

    from patent_risk.bench.grammar_step import make_backend
    from patent_risk.runtime import outlines_advance

    monkeypatch.delenv(outlines_advance.DISABLE_ENV, raising=False)
    monkeypatch.delenv(outlines_advance.MASK_CACHE_ENV, raising=False)
    assert outlines_advance.install()
    spec = '[^"]{0,30}"'  # a bounded free-text string, then its closing quote: the states of a v2 reason
    backend = make_backend("outlines", gemma_tokenizer, 262_144)

    def walk(text):
        g = backend.compile_grammar(StructuredOutputOptions.REGEX, spec)
        bitmask, stock = backend.allocate_token_bitmask(2), backend.allocate_token_bitmask(1)
        for t in gemma_tokenizer(text, add_special_tokens=False)["input_ids"] + [None]:
            bitmask.fill_(-1)
            g.fill_bitmask(bitmask, 1)
            g.guide.write_mask_into(stock.data_ptr(), stock.numel(), stock.element_size())
            assert torch.equal(bitmask[1], stock[0]) and bool((bitmask[0] == -1).all())
            if t is not None:
                assert g.accept_tokens("r", [t])
        assert g.guide.is_finished()
        return g

    g = walk('특허 claim"')
    masks, _ = g._patent_risk_masks
    assert masks.hits == 0 and len(masks) > 0
    walk('gel 2.5%, UV"')
    assert masks.hits > 0
    kinds = {row is outlines_advance.FEW for row in masks._rows.values()}
    assert kinds == {True, False}  # inside the string: a copied row; after the closing quote (EOS only): outlines'
    monkeypatch.setenv(outlines_advance.MASK_CACHE_ENV, "0")
    off = make_backend("outlines", gemma_tokenizer, 262_144)
    assert not hasattr(off.compile_grammar(StructuredOutputOptions.REGEX, spec), "_patent_risk_masks")
