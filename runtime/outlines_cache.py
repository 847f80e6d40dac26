"""A key for outlines' compiled-index cache that is the same in every process (a vLLM general plugin).

vLLM 0.32 keys the outlines backend's index cache (``VLLM_V1_USE_OUTLINES_CACHE``: an SQLite file under
``OUTLINES_CACHE_DIR``) with ``f"{vocabulary._hash}_{regex}"``, where ``_hash`` is the sha256 of
``repr(outlines_core.Vocabulary)``. That repr lists a Rust HashMap in its iteration order, which is
seeded at random in every process: measured here, two processes with Gemma 3's tokenizer got two
different keys, and one bench worker's cache file held every schema twice, once per process. So the
on-disk cache never answered another process: a resumed run, a re-run, another adapter on the same base
and `patent-risk serve start` compiled every schema again (2-9 s each on Gemma's 262,144-token vocabulary).

Here ``get_outlines_vocabulary`` builds the same vocabulary from the same reduced token map as vLLM does,
and keys it by the sha256 of its content in sorted order (the eos id, then each token's bytes and ids):
the same tokenizer gives the same key in every process, and a different vocabulary a different one. It
also skips hashing a repr of the whole vocabulary.

vLLM imports ``get_outlines_vocabulary`` by name into ``backend_outlines``, and starts its engine core
and workers as fresh processes, so the replacement is installed in every vLLM process through the
``vllm.general_plugins`` entry point (``register``), in both modules. ``PATENT_RISK_STOCK_OUTLINES_KEY=1``
keeps vLLM's own. The fix belongs upstream.

The same plugin makes opening the cache survive a race: vLLM's ``OutlinesDiskCache`` switches its SQLite file
to WAL on every open, and two connections opening a fresh file at once can get "database is locked" at
once, without SQLite's busy wait (measured here: 6 of 300 pairs of threads; it failed a CI run, the
precompile's two threads on a cold cache). ``RetryingDiskCache`` opens it again after a short pause, and
shares one deserialized index among the requests of a schema instead of reading a copy per request (a v2
index on Gemma's vocabulary is hundreds of megabytes: a copy per request ran the engine core out of memory).
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import time

DISABLE_ENV = "PATENT_RISK_STOCK_OUTLINES_KEY"
UTILS = "vllm.v1.structured_output.utils"
BACKEND = "vllm.v1.structured_output.backend_outlines"


def vocabulary_key(eos_token_id: int | None, reduced: dict[bytes, list[int]]) -> int:
    """The sha256 (as an int, like vLLM's ``_hash``) of the eos id and every (token bytes, ids) pair in
    sorted order: independent of dict or HashMap order, hence of the process."""
    h = hashlib.sha256(f"eos={eos_token_id};n={len(reduced)};".encode("ascii"))
    for token in sorted(reduced):
        ids = ",".join(str(i) for i in sorted(reduced[token]))
        h.update(len(token).to_bytes(4, "little") + token + ids.encode("ascii") + b";")
    return int(h.hexdigest(), 16)


def get_outlines_vocabulary(tokenizer):
    """vLLM's ``get_outlines_vocabulary`` (cached on the tokenizer object, the same reduced vocabulary and
    eos), with a content key instead of a hash of the repr."""
    import outlines_core as oc
    from vllm.v1.structured_output import utils

    cached = getattr(tokenizer, "_outlines_vocabulary", None)
    if cached is not None:
        return cached
    reduced = utils._reduced_vocabulary(tokenizer)
    vocabulary = utils.OutlinesVocabulary.__new__(utils.OutlinesVocabulary)
    vocabulary.inner = oc.Vocabulary(tokenizer.eos_token_id, reduced)
    vocabulary._hash = vocabulary_key(tokenizer.eos_token_id, reduced)
    tokenizer._outlines_vocabulary = vocabulary
    return vocabulary


OPEN_ATTEMPTS = 8


MEMO_INDEXES = 128  # as many as vLLM's own in-memory cache holds when the disk cache is off (LRUCache(maxsize=128))


def retrying_disk_cache(stock: type) -> type:
    """vLLM's ``OutlinesDiskCache`` class, opened again (up to ``OPEN_ATTEMPTS`` times, 0.05 s doubling) when
    SQLite answers "database is locked" while it opens (the WAL switch of a fresh file by two connections), and
    handing every request of a schema the same index object.

    The stock class deserializes the index from SQLite on every lookup, and vLLM's outlines backend looks it up
    once per request: each request gets its own copy. That is harmless for a labels-only schema (kilobytes) and
    fatal for one with free text: on Gemma 3's vocabulary a v2 index (a 40-character reason per element) is
    257-532 MB serialized, and 147 requests of four such schemas took the engine core to 13.7 GB and the OOM
    killer (measured here, 2026-12-03; the front end then waited for ever). Here the deserialized indexes of the
    last ``MEMO_INDEXES`` keys are kept in memory and shared, as vLLM's own in-memory cache (disk cache off)
    shares them: an index is read-only once built, each request's ``Guide`` keeps its own state. The memo is bounded
    by bytes as well (runtime.memory_guard.memo_budget_bytes: half the memory available when it opens), so that
    many free-text schemas over a long run do not pile up."""
    if getattr(stock, "_patent_risk_retrying", False):
        return stock

    import threading
    from collections import OrderedDict

    class RetryingDiskCache(stock):
        _patent_risk_retrying = True

        def __init__(self, path: str):
            from patent_risk.runtime.memory_guard import memo_budget_bytes

            self._memo: OrderedDict = OrderedDict()  # key -> (index, its serialized bytes)
            self._memo_lock = threading.Lock()  # vLLM compiles grammars on a thread pool
            self._memo_budget = memo_budget_bytes()
            for attempt in range(OPEN_ATTEMPTS):
                try:
                    super().__init__(path)
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == OPEN_ATTEMPTS - 1:
                        raise
                    time.sleep(0.05 * 2 ** attempt)

        def stored_bytes(self, key: str) -> int | None:
            """The serialized size of ``key``'s entry in the disk cache (None: not there)."""
            row = self._db.execute("SELECT length(value) FROM cache WHERE key=?", (key,)).fetchone()
            return None if row is None else int(row[0])

        def _remember(self, key: str, value):
            if not isinstance(value, str):
                size = self.stored_bytes(key) or 0
                with self._memo_lock:
                    self._memo[key] = (value, size)
                    self._memo.move_to_end(key)
                    # bounded by bytes (the indexes of free-text schemas are hundreds of MB each) and by count;
                    # the newest always stays. An evicted index lives on in the requests still decoding with it.
                    while len(self._memo) > 1 and (len(self._memo) > MEMO_INDEXES or
                                                   sum(b for _, b in self._memo.values()) > self._memo_budget):
                        self._memo.popitem(last=False)
            return value

        def _recall(self, key: str):
            with self._memo_lock:
                entry = self._memo.get(key)
                if entry is not None:
                    self._memo.move_to_end(key)
                return None if entry is None else entry[0]

        def __contains__(self, key: str) -> bool:
            return self._recall(key) is not None or super().__contains__(key)

        def __getitem__(self, key: str):
            value = self._recall(key)
            return value if value is not None else self._remember(key, super().__getitem__(key))

        def __setitem__(self, key: str, value) -> None:
            super().__setitem__(key, value)
            self._remember(key, value)

        def clear(self) -> None:
            with self._memo_lock:
                self._memo.clear()
            super().clear()

    RetryingDiskCache.__name__ = RetryingDiskCache.__qualname__ = stock.__name__
    return RetryingDiskCache


def install() -> bool:
    """Replace vLLM's function in its utils module and, if already imported, in backend_outlines, and its disk
    cache class by one that survives an opening race. False (nothing changed) where that vLLM has no such
    function or no reduced-vocabulary helper."""
    try:
        from vllm.v1.structured_output import utils
    except ImportError:
        return False
    if not all(hasattr(utils, n) for n in ("get_outlines_vocabulary", "_reduced_vocabulary", "OutlinesVocabulary")):
        return False
    utils.get_outlines_vocabulary = get_outlines_vocabulary
    if hasattr(utils, "OutlinesDiskCache"):
        utils.OutlinesDiskCache = retrying_disk_cache(utils.OutlinesDiskCache)
    backend = sys.modules.get(BACKEND)
    if backend is not None and hasattr(backend, "get_outlines_vocabulary"):
        backend.get_outlines_vocabulary = get_outlines_vocabulary
    return True


def is_installed() -> bool:
    utils = sys.modules.get(UTILS)
    return utils is not None and getattr(utils, "get_outlines_vocabulary", None) is get_outlines_vocabulary


def register() -> None:
    """The ``vllm.general_plugins`` entry point: vLLM calls it in every process it starts. Also installs
    runtime.outlines_advance (the grammar advanced without building each state's token list)."""
    from . import outlines_advance

    outlines_advance.install()
    if os.environ.get(DISABLE_ENV):
        return
    install()


def precompile(llm, schemas: list[dict], threads: int | None = None,
               sizes: dict[str, int] | None = None) -> dict[str, float | int]:
    """Compile, before a batch is generated, the outlines indexes of its distinct JSON schemas that the disk
    cache lacks, on ``threads`` threads (default: every core) of this (the front-end) process, into the disk
    cache the engine core reads: vLLM then finds each one there instead of compiling it on its single grammar
    thread while the model's threads hold the cores (measured here with a schema per record: 147 schemas of
    3 s each took the engine 844 s to generate, the model starved). outlines-core releases the GIL while it
    compiles, so threads run in parallel.

    Each schema goes through vLLM's own ``OutlinesBackend.compile_grammar`` (the same regex, key, timeout and
    cache as the engine core; an already cached schema costs a lookup), one backend and one SQLite connection
    per thread, all opened here before the threads start (two connections opening a fresh cache file at once
    can be refused). A schema that fails here (a compile timeout, say) is left to the engine, which reports it
    as the engine failure it is. ``sizes``, when given, receives each schema's serialized index size in the disk
    cache (runtime.memory_guard turns them into memory). Needs the disk cache (``VLLM_V1_USE_OUTLINES_CACHE``) and this plugin's key, else
    nothing is done: another process could not find the result."""
    import json
    import queue
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from vllm import envs

    specs = list(dict.fromkeys(json.dumps(s) for s in schemas))  # as vLLM turns a JSON constraint into its key
    stats: dict[str, float | int] = {"schemas": len(specs), "compiled_or_found": 0, "found_cached": 0, "failed": 0,
                                     "seconds": 0.0, "threads": 0}
    if not specs or not is_installed() or not envs.VLLM_V1_USE_OUTLINES_CACHE:
        return stats
    from vllm.tokenizers import cached_tokenizer_from_config
    from vllm.v1.structured_output.backend_outlines import OutlinesBackend
    from vllm.v1.structured_output.backend_types import StructuredOutputOptions

    vc = llm.llm_engine.vllm_config
    tokenizer = cached_tokenizer_from_config(model_config=vc.model_config)
    n = max(1, min(len(specs), threads or os.cpu_count() or 1))
    t0 = time.perf_counter()
    # The vocabulary once and every thread's backend (its own SQLite connection) here, one after the other.
    backends: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(n):
        backends.put(OutlinesBackend(vc, tokenizer=tokenizer, vocab_size=vc.model_config.get_vocab_size()))
    local = threading.local()

    def key_of(be, spec: str) -> str | None:
        try:  # the same key as the backend's _compile_index
            from outlines_core import json_schema

            return f"{be.vocabulary._hash}_{json_schema.build_regex_from_schema(spec)}"
        except Exception:  # noqa: BLE001 - the key is only for the cache's state and the index's size
            return None

    def one(spec: str) -> tuple[bool, bool]:
        """(compiled or found, found in the disk cache before)"""
        be = getattr(local, "backend", None)
        if be is None:
            be = local.backend = backends.get_nowait()
        key = key_of(be, spec)
        try:
            found = key is not None and key in be.cache
        except Exception:  # noqa: BLE001 - a cache that cannot say is not a warm one
            found = False
        try:
            be.compile_grammar(StructuredOutputOptions.JSON, spec)
        except Exception:  # noqa: BLE001 - the engine compiles it again and reports the failure itself
            return False, found
        if sizes is not None and key is not None:
            try:
                size = be.cache.stored_bytes(key) if hasattr(be.cache, "stored_bytes") else None
                if size is not None:
                    sizes[spec] = size
            except Exception:  # noqa: BLE001 - the size is only for a warning
                pass
        return True, found

    with ThreadPoolExecutor(n) as pool:
        done = list(pool.map(one, specs))
    ok = [d[0] for d in done]
    stats.update(compiled_or_found=sum(ok), found_cached=sum(d[1] for d in done), failed=len(ok) - sum(ok),
                 seconds=round(time.perf_counter() - t0, 3), threads=n)
    return stats
