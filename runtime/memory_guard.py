"""Memory the structured-outputs indexes of a run will take, against the memory there is (issue 31).

An outlines index is built for each distinct JSON schema over the model's whole vocabulary. For a labels-only
schema it is kilobytes; for one with free text it is not: on Gemma 3's 262,144-token vocabulary a v2 index (a
reason per element) measured 257-532 MB serialized and about 575 MB deserialized, per copy, in the engine core.
The compiled indexes are in outlines' disk cache before a chunk is submitted (runtime.outlines_cache.precompile),
so their serialized sizes are known: this module turns them into the memory the engine core will hold and says,
before the chunk is submitted, when that will not fit."""
from __future__ import annotations

import os
from pathlib import Path

# deserialized / serialized: a 532 MB serialized v2 index held about 575 MB in the engine core (2026-12-03)
IN_MEMORY_PER_SERIALIZED = 1.1
CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def available_bytes() -> int | None:
    """Memory this process tree can still take: the smaller of the machine's available memory and what its memory
    cgroup's limit leaves (None where neither can be read)."""
    found: list[int] = []
    try:
        import psutil

        found.append(int(psutil.virtual_memory().available))
    except Exception:  # noqa: BLE001 - no psutil, no /proc: nothing to say
        pass
    for limit_path, usage_path in CGROUP_FILES:
        limit, usage = _read_int(limit_path), _read_int(usage_path)
        if limit is not None and usage is not None and limit < 2**60:  # v1 writes a huge number for no limit
            found.append(max(0, limit - usage))
            break
    return min(found) if found else None


def _size(n: float) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def index_warning(serialized: dict[str, int], available: int | None) -> str | None:
    """The warning, with its fix, when the distinct schemas' indexes (``serialized``: bytes in the disk cache per
    schema) would take more memory than is ``available``; None when they fit or nothing is known."""
    if not serialized or available is None:
        return None
    need = sum(serialized.values()) * IN_MEMORY_PER_SERIALIZED
    if need <= available:
        return None
    return (f"warning: the {len(serialized)} distinct JSON schema(s) decoded together need about {_size(need)} of outlines "
            f"indexes in the engine core's memory (measured in the compiled cache, the largest "
            f"{_size(max(serialized.values()))} serialized), and {_size(available)} is available: the kernel may kill the "
            "engine. To fit: a smaller --chunk-size (fewer schemas in flight at once), an output schema without free "
            "text (v1 or v3 instead of v2), or another --backend (xgrammar or guidance build no outlines index)")


def memo_budget_bytes() -> int:
    """How many serialized bytes of outlines indexes the engine core keeps deserialized and shared
    (runtime.outlines_cache): ``PATENT_RISK_OUTLINES_MEMO_BYTES``, else half the memory available when the cache opens
    (at least 256 MiB)."""
    given = os.environ.get("PATENT_RISK_OUTLINES_MEMO_BYTES")
    if given and given.isdigit():
        return int(given)
    available = available_bytes()
    return max(256 * 2**20, int((available or 8 * 2**30) / 2 / IN_MEMORY_PER_SERIALIZED))
