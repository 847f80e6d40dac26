"""The conditions a run's speed was measured in (issue 33), and whether two runs' speeds may be compared.

`evaluate batch` records them in run.json's ``conditions``, one entry per invocation (a resumed run has several):
the machine, the engine (offline or a server; shared with the run before it or not), the prefix cache's state
when the invocation began (empty: a fresh engine, or reset) and the prompt tokens it then served, the grammar
cache (constrained runs), the batch (chunk size, vLLM's max_num_seqs, a server's concurrency) and whether label
probabilities were read. Two runs' throughput is put as a ratio only when these match; otherwise the report gives
both figures and says which condition differs. Pure: no engine, no files."""
from __future__ import annotations

from typing import Any, Sequence

# A run whose prompt tokens came from the prefix cache in shares this far apart did not prefill alike.
CACHED_SHARE_TOLERANCE = 0.05
EMPTY_STATES = ("empty (a fresh engine)", "reset")
MIXED = "mixed"
_SAME = ("mode", "grammar_cache", "chunk_size", "max_num_seqs", "max_concurrency", "label_probs")
_WORDS = {"mode": "engine", "grammar_cache": "grammar cache", "chunk_size": "chunk size", "max_num_seqs": "max_num_seqs",
          "max_concurrency": "server concurrency", "label_probs": "label probabilities"}


def summarize(invocations: Sequence[dict[str, Any]] | None) -> dict[str, Any] | None:
    """One run's conditions from its invocations: each field's value where every invocation agrees, ``"mixed"``
    where they differ; prompt and cached prompt tokens summed (cached None when any invocation could not tell);
    ``prefix_cache_emptied``: whether every invocation began with an empty prefix cache. None: a run written
    before conditions were recorded."""
    if not invocations:
        return None
    out: dict[str, Any] = {"invocations": len(invocations)}
    for key in ("machine", "mode", "shared_with", "prefix_cache", "grammar_cache", "chunk_size", "max_num_seqs",
                "max_concurrency", "label_probs"):
        values = [inv.get(key) for inv in invocations]
        out[key] = values[0] if all(v == values[0] for v in values) else MIXED
    out["prefix_cache_emptied"] = all(inv.get("prefix_cache") in EMPTY_STATES for inv in invocations)
    out["prompt_tokens"] = sum(int(inv.get("prompt_tokens") or 0) for inv in invocations)
    cached = [inv.get("cached_prompt_tokens") for inv in invocations]
    out["cached_prompt_tokens"] = None if any(c is None for c in cached) else sum(cached)
    return out


def cached_share(c: dict[str, Any]) -> float | None:
    """The share of a run's prompt tokens its engine served from the prefix cache (None: unknown)."""
    if c.get("cached_prompt_tokens") is None or not c.get("prompt_tokens"):
        return None
    return c["cached_prompt_tokens"] / c["prompt_tokens"]


def _machine(m: Any) -> str:
    if not isinstance(m, dict):
        return str(m)
    return f"{m.get('cpu')}, {m.get('cpus')} CPUs" + (f", {m['gpu']}" if m.get("gpu") else "")


def _prefill(c: dict[str, Any]) -> str:
    share = cached_share(c)
    said = "unknown share" if share is None else f"{share:.0%}"
    state = "emptied before" if c.get("prefix_cache_emptied") else f"not emptied ({c.get('prefix_cache')})"
    return f"prefix cache {state}, {said} of prompt tokens from it"


def differences(ref: dict[str, Any] | None, run: dict[str, Any] | None) -> list[str]:
    """What differs between two runs' conditions (``summarize``), in words, reference -> run; empty when their
    speeds may be put side by side as a ratio. The grammar cache counts only between two constrained runs (an
    unconstrained run has none); an engine shared with an earlier run counts only through its prefix cache
    (reset between runs, as `evaluate batch --both` does)."""
    if ref is None or run is None:
        return ["conditions not recorded (a run made before they were)"]
    out: list[str] = []
    if ref.get("machine") != run.get("machine"):
        out.append(f"machine: {_machine(ref.get('machine'))} -> {_machine(run.get('machine'))}")
    for key in _SAME:
        a, b = ref.get(key), run.get(key)
        if key == "grammar_cache" and (a is None or b is None):
            continue
        if a != b or MIXED in (a, b):
            out.append(f"{_WORDS[key]}: {a} -> {b}")
    a_share, b_share = cached_share(ref), cached_share(run)
    alike = ref.get("prefix_cache_emptied") and run.get("prefix_cache_emptied")
    if not alike:
        if a_share is None or b_share is None or abs(a_share - b_share) > CACHED_SHARE_TOLERANCE:
            out.append(f"prefill: {_prefill(ref)} -> {_prefill(run)}")
    elif a_share is not None and b_share is not None and abs(a_share - b_share) > CACHED_SHARE_TOLERANCE:
        out.append(f"prefill: {a_share:.0%} -> {b_share:.0%} of prompt tokens from the prefix cache")
    return out


def speed_comparison(ref_speed: dict[str, Any] | None, run_speed: dict[str, Any] | None,
                     ref_conditions: dict[str, Any] | None, run_conditions: dict[str, Any] | None) -> dict[str, Any]:
    """A comparison's ``speed``: both runs' samples/s (grammar compile excluded), their ratio run / reference only
    when the conditions match, else None with ``conditions_differ`` saying what differs."""
    a = (ref_speed or {}).get("samples_per_s")
    b = (run_speed or {}).get("samples_per_s")
    differ = differences(ref_conditions, run_conditions)
    ratio = round(b / a, 3) if a and b and not differ else None
    return {"reference_samples_per_s": a, "run_samples_per_s": b, "ratio": ratio, "conditions_differ": differ}


def describe(c: dict[str, Any] | None) -> str:
    """One run's conditions in one line, for the report."""
    if c is None:
        return "not recorded"
    parts = [_prefill(c)]
    if c.get("shared_with"):
        parts.append(f"engine shared with {c['shared_with']}")
    if c.get("grammar_cache"):
        parts.append(f"grammar cache {c['grammar_cache']}")
    batch = [f"chunk {c.get('chunk_size')}"]
    if c.get("max_num_seqs") is not None:
        batch.append(f"max_num_seqs {c['max_num_seqs']}")
    if c.get("max_concurrency") is not None:
        batch.append(f"concurrency {c['max_concurrency']}")
    parts.append(", ".join(batch))
    parts.append(f"label probabilities {'on' if c.get('label_probs') else 'off'}")
    if c.get("invocations", 1) > 1:
        parts.append(f"{c['invocations']} invocations (resumed)")
    return "; ".join(parts)
