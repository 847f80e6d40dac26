"""Where the project keeps what it makes at run time, and content hashes for provenance.

Everything (the converted base model, adapters, runs, reports, server state) lives under one
git-ignored folder, ``artifacts/`` in the repository, or wherever ``PATENT_RISK_HOME`` points.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

ENV_HOME = "PATENT_RISK_HOME"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def home() -> Path:
    """The artifacts folder (created on demand)."""
    env = os.environ.get(ENV_HOME)
    path = Path(env).expanduser() if env else project_root() / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def subdir(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dir_sha256(path: str | Path, patterns: tuple[str, ...] = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja")) -> str:
    """A content hash of a model or adapter folder: the names and contents of its weight and config files."""
    root = Path(path)
    h = hashlib.sha256()
    files = sorted({p for pat in patterns for p in root.glob(pat) if p.is_file()})
    for p in files:
        if p.name == "manifest.json":
            continue
        h.update(p.name.encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def describe_path(path: str | Path) -> dict[str, str]:
    """Provenance of a file or folder: its path and content hash."""
    p = Path(path)
    digest = file_sha256(p) if p.is_file() else dir_sha256(p)
    return {"path": str(p), "sha256": digest}
