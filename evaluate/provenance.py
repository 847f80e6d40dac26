"""A run's identity: the run.json fields that decide what was evaluated, keyed on content, not paths.

One definition serves two readers: `evaluate batch` refuses to resume (or to call finished) a run
directory whose identity differs from the invocation's, before any engine or model is loaded, and
`evaluate report` lists what differs between two runs it compares.

Identity (each compared as written here):

- ``base_model``: the content hash of the model folder (its name when it is a hub id, not a folder)
- ``adapter``: the adapter folder's content hash (None without one); a moved folder keeps its identity
- ``adapter_mode``: ``lora`` or ``merged``
- ``dataset``: the dataset file's sha256
- ``schema``: the target schema's name and hash (a legacy sorted-key hash read as the current one)
- ``constrained``; ``backend`` and ``structured_outputs`` (the options of every constrained request);
  ``structured_outputs_config`` (the engine-level config the offline engine was built with: vLLM 0.32's
  xgrammar and guidance backends take their whitespace rule from it, not from the request; None through
  a server, whose own start decides it)
- ``prompt``: the prompt's version and hash (built-in p1: of its rendering; a ``--prompt-template``: of the
  template's text and the schema; where the template was read from is not identity)
- ``sampling``: temperature, top_p, seed, max_tokens rule
- ``engine``: name, version and mode (offline or server)
- ``engine_args``: the ``--engine-arg`` settings that can change outputs (runtime.engine_args: all but
  scheduling, parallelism, memory and compilation; {} for runs written before they were recorded)

Everything else run.json records (KV-cache size, LD_PRELOAD and other CPU settings, a server's URL,
paths, timestamps, counts) describes an invocation, not the evaluation, and never blocks a resume.
"""
from __future__ import annotations

import json
from typing import Any

from patent_risk.runtime.engine_args import output_changing
from patent_risk.schemas.output import current_schema_hash

# Offline runs written before structured-outputs options were recorded used exactly these; server runs none.
_LEGACY_OFFLINE_OPTIONS = {"disable_any_whitespace": True}


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else None


def _content(described: Any) -> Any:
    """A described file or folder ({path, sha256, ...}) by its content; a bare name as it is."""
    if described is None or isinstance(described, str):
        return described
    return _get(described, "sha256") or _get(described, "hash") or _get(described, "name")


def _prompt_identity(prompt: Any) -> Any:
    """A prompt by its version and hash (a template's text is hashed; where it was read from is not identity)."""
    return {k: prompt.get(k) for k in ("version", "hash")} if isinstance(prompt, dict) else prompt


def identity(info: dict[str, Any]) -> dict[str, Any]:
    """The identity fields of a run.json document (this format or an older one), in a fixed order."""
    engine = info.get("engine") if isinstance(info.get("engine"), dict) else {}
    constrained = info.get("constrained")
    options = info.get("structured_outputs")
    if options is None and constrained and "structured_outputs" not in info:
        options = dict(_LEGACY_OFFLINE_OPTIONS) if engine.get("mode") == "offline" else {}
    engine_config = info.get("structured_outputs_config")
    if "structured_outputs_config" not in info:  # runs written before it was recorded: the backend alone
        engine_config = {"backend": info.get("backend")} if engine.get("mode") == "offline" else None
    adapter_mode = info.get("adapter_mode")
    if adapter_mode is None and info.get("adapter"):
        adapter_mode = "lora"  # runs written before merged mode existed
    schema = info.get("schema")
    return {
        "base_model": _content(info.get("base_model")),
        "adapter": _content(info.get("adapter")),
        "adapter_mode": adapter_mode,
        "dataset": _content(info.get("dataset")),
        # a hash recorded before property order counted is read as today's hash of the same committed schema
        "schema": ({"name": _get(schema, "name"), "hash": current_schema_hash(_get(schema, "name"), _get(schema, "hash"))}
                   if isinstance(schema, dict) else schema),
        "constrained": constrained,
        "backend": info.get("backend") if constrained else None,
        "structured_outputs": options if constrained else None,
        "structured_outputs_config": engine_config if constrained else None,
        "prompt": _prompt_identity(info.get("prompt")),
        "sampling": info.get("sampling"),
        "engine": {k: engine.get(k) for k in ("name", "version", "mode")},
        "engine_args": output_changing(info.get("engine_args") if isinstance(info.get("engine_args"), dict) else None),
    }


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per identity field that differs, ``field: old -> new`` (sub-fields named, e.g. engine.version)."""
    a, b = identity(old), identity(new)
    out = []
    for key in a:
        x, y = a[key], b[key]
        if x == y:
            continue
        if isinstance(x, dict) and isinstance(y, dict):
            for sub in sorted(set(x) | set(y), key=lambda s: (list(x) + list(y)).index(s)):
                if x.get(sub) != y.get(sub):
                    out.append(f"{key}.{sub}: {_show(x.get(sub))} -> {_show(y.get(sub))}")
        else:
            out.append(f"{key}: {_show(x)} -> {_show(y)}")
    return out


def resume_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What refuses a resume: the identity lines, and whether rows carry label probabilities (it changes no output,
    so two runs that differ in it stay comparable, but one run's rows must all have them or none). A run.json
    from before they existed had none."""
    out = differences(old, new)
    x, y = bool(old.get("label_probs", False)), bool(new.get("label_probs", False))
    if x != y:
        flag = "--label-probs" if x else "--no-label-probs"
        out.append(f"label_probs: {_show(x)} -> {_show(y)} (this run's rows were written {'with' if x else 'without'} "
                   f"label probabilities: finish it with {flag})")
    return out


def comparison_differences(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str] | None:
    """What differs between two compared runs: the identity lines, then the max_tokens budget when both
    recorded it (it follows from model, schema and records, so it never blocks a resume, but a reader of
    a comparison wants to see it). None when either run has no run.json to tell."""
    if old is None or new is None:
        return None
    out = differences(old, new)
    x, y = old.get("max_tokens"), new.get("max_tokens")
    if x is not None and y is not None and x != y:
        out.append(f"max_tokens: {_show(x)} -> {_show(y)}")
    return out
