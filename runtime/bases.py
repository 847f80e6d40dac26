"""Which base model an adapter belongs to, and whether a model it is about to be decoded on is that base.

An adapter knows its base: `patent-risk train qlora` records it in manifest.json (the value given and the
folder's content hash); an adapter trained elsewhere names it in adapter_config.json
(``base_model_name_or_path``). That base is the default ``--model`` everywhere an adapter is given, and a
``--model`` that is neither the base nor made from it (an `nf4-base` or `merge` output records the content
hashes of what it was made from: its ``lineage``) is refused before any engine starts.

Models are compared by what they are, not how they are spelt: by content hash where both sides have one
(a local folder, an embedded model, a hub id found in the local Hugging Face cache); where the recorded base
has no content to compare (a hub id not in this machine's cache), by the adapter's own weight shapes against
the model's config (hidden size, layers); where neither can be read, by name.
"""
from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from patent_risk.schemas.errors import UserError

from .adapters import read_manifest
from .artifacts import dir_sha256
from .embedded import default_model_label, embedded_by_name, resolve_model
from .hub import cached_folder, is_hub_id

EMPTY = hashlib.sha256().hexdigest()  # what an absent folder hashed to in manifests written before hub ids resolved
DERIVED_MANIFESTS = ("nf4_base_manifest.json", "merge_manifest.json")
OVERRIDE = "--allow-other-base"


@dataclass(frozen=True)
class AdapterBase:
    """An adapter's base as it recorded it. ``model``: the value to decode on (None: the embedded default);
    ``hashes``: content hashes it is known by (empty when the record has none); ``source``: the file that said so."""

    adapter: Path
    model: str | None
    label: str
    hashes: frozenset[str]
    source: str


def adapter_base(adapter_dir: str | Path) -> AdapterBase | None:
    """The base ``adapter_dir`` was trained on: its manifest.json, else its adapter_config.json (None: neither says)."""
    adapter_dir = Path(adapter_dir)
    manifest = read_manifest(adapter_dir)
    if manifest is not None and isinstance(manifest.get("config"), dict):
        value = manifest["config"].get("base_model")
        recorded = manifest.get("base_model") if isinstance(manifest.get("base_model"), dict) else {}
        hashes = {recorded.get("sha256")} | set(recorded.get("lineage") or [])
        return AdapterBase(adapter_dir, value, str(recorded.get("name") or default_model_label(value)),
                           frozenset(hashes - {None, EMPTY}), "manifest.json")
    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = cfg.get("base_model_name_or_path")
    if not value:
        return None
    return AdapterBase(adapter_dir, value, value, frozenset(), "adapter_config.json")


def lineage(folder: str | Path) -> set[str]:
    """The content hashes a model folder is known by: its own, and (an `nf4-base` or `merge` output) those of
    the models it was made from, as its manifest records them."""
    folder = Path(folder)
    hashes = {dir_sha256(folder)}
    for name in DERIVED_MANIFESTS:
        path = folder / name
        if path.exists():
            doc = json.loads(path.read_text(encoding="utf-8"))
            base = doc.get("base_model") if isinstance(doc.get("base_model"), dict) else {}
            hashes |= {base.get("sha256")} | set(doc.get("lineage") or [])
    return hashes - {None, EMPTY}


def _embedded(model: str | None) -> bool:
    """``model`` names an embedded model (None: the default), not a folder of that name."""
    return embedded_by_name(model) is not None and not (model and Path(model).exists())


def local_folder(model: str | None, log: Callable[[str], None] = print) -> Path | None:
    """The folder a model value names on this machine: an embedded model (provisioned), a local folder, a hub id
    in the local Hugging Face cache; None for a hub id that is not cached."""
    if _embedded(model):
        return Path(resolve_model(model, log))
    if model is not None and Path(model).is_dir():
        return Path(model)
    return cached_folder(model) if is_hub_id(model) else None


def model_folder(model: str | None, log: Callable[[str], None] = print) -> Path:
    """A local folder for any model value: an embedded model (provisioned on first use), a local folder, or a hub
    id through the local Hugging Face cache (runtime.hub.model_folder: downloaded when allowed, else a UserError
    naming the model and how to log in)."""
    from .hub import model_folder as hub_folder

    if _embedded(model):
        return Path(resolve_model(model, log))
    return hub_folder(str(model), log)


def adapter_shapes(adapter_dir: str | Path) -> dict[str, list[int]]:
    """Tensor name -> shape from adapter_model.safetensors' header (no weights read)."""
    with open(Path(adapter_dir) / "adapter_model.safetensors", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


_HIDDEN_IN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


def shape_problem(adapter_dir: str | Path, folder: str | Path) -> str | None:
    """Why the adapter's weights cannot belong to the model in ``folder`` (its config's hidden size and layer
    count against the LoRA A/B shapes), None when they fit."""
    cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    text = cfg.get("text_config") or cfg
    hidden, layers = text.get("hidden_size"), text.get("num_hidden_layers")
    for key, shape in adapter_shapes(adapter_dir).items():
        module = key.split(".lora_")[0].rsplit(".", 1)[-1]
        m = re.search(r"\.layers\.(\d+)\.", key)
        if layers and m and int(m.group(1)) >= layers:
            return f"the adapter has weights for layer {m.group(1)}, the model {layers} layers"
        if hidden and ".lora_A." in key and module in _HIDDEN_IN and shape[-1] != hidden:
            return f"the adapter's {module} takes {shape[-1]} features, the model's hidden size is {hidden}"
        if hidden and ".lora_B." in key and module == "o_proj" and shape[0] != hidden:
            return f"the adapter's o_proj writes {shape[0]} features, the model's hidden size is {hidden}"
    return None


def _unrelated(base: AdapterBase, model: str | None, log: Callable[[str], None]) -> str | None:
    """Why ``model`` is neither ``base`` nor made from it; None when it is."""
    if model == base.model:
        return None
    folder = local_folder(model, log)
    base_hashes = set(base.hashes)
    if not base_hashes:
        base_folder = local_folder(base.model, log)
        if base_folder is not None and base_folder.is_dir():
            base_hashes = {dir_sha256(base_folder)}
    if folder is not None and base_hashes:
        if lineage(folder) & base_hashes:
            return None
        return (f"its content (sha256 {dir_sha256(folder)[:12]}) is neither the base's (sha256 "
                f"{', '.join(sorted(h[:12] for h in base_hashes))}) nor recorded as made from it")
    if folder is not None:
        problem = shape_problem(base.adapter, folder)
        if problem is None:
            log(f"note: {base.label} is not on this machine to compare contents; {model} has the shapes "
                f"{base.adapter} was trained for")
        return problem
    return f"neither is on this machine to compare ({model} is not in the local Hugging Face cache)"


def settle_model(model: str | None, adapter_dirs: list[str | Path], *, allow_other_base: bool = False,
                 log: Callable[[str], None] = print) -> str | None:
    """The model to decode ``adapter_dirs`` on: ``model`` when given, else the first adapter's recorded base
    (None: the embedded default). A model that is not every adapter's base, nor made from it, is a UserError
    naming both (``allow_other_base``: a warning instead). Needs no engine."""
    bases = [b for b in map(adapter_base, adapter_dirs) if b is not None]
    if model is None and bases:
        model = bases[0].model
        log(f"base model: {bases[0].label} (from {bases[0].adapter / bases[0].source})")
    for base in bases:
        why = _unrelated(base, model, log)
        if why is None:
            continue
        shown = default_model_label(model)
        msg = (f"--model {shown} is not the base {base.adapter} was trained on ({base.label}, from its {base.source}) "
               f"nor made from it: {why}")
        if allow_other_base:
            log(f"warning: {msg}; decoding on it anyway ({OVERRIDE})")
            continue
        raise UserError(f"{msg}. Leave --model out to use the adapter's base, give that base (or its "
                        f"`patent-risk train nf4-base` output), or pass {OVERRIDE} to decode on {shown} on purpose")
    return model
