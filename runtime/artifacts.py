"""Where the project keeps what it makes at run time, and content hashes for provenance.

Everything (the converted base model, adapters, runs, reports, server state) lives under one
folder: wherever ``PATENT_RISK_HOME`` points; else ``artifacts/`` in the repository (git-ignored) when the
code runs from a checkout, or ``artifacts/`` in the current directory when it runs from an installed wheel.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

ENV_HOME = "PATENT_RISK_HOME"


def project_root() -> Path:
    """The checkout this code runs from (or, installed, the folder that holds the packages)."""
    return Path(__file__).resolve().parent.parent


def in_checkout() -> bool:
    """True when running from a source checkout (pyproject.toml beside the packages), not an installed wheel."""
    return (project_root() / "pyproject.toml").is_file()


def home() -> Path:
    """The artifacts folder (created on demand)."""
    env = os.environ.get(ENV_HOME)
    path = Path(env).expanduser() if env else (project_root() if in_checkout() else Path.cwd()) / "artifacts"
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


_BIG = 64 << 20  # files at least this large get their hash cached (model weights)
_HASH_CACHE = "sha256-cache.json"


def _cached_file_sha256(path: Path) -> str:
    """``file_sha256`` for weight files, cached in the artifacts folder by (real path, size, mtime):
    hashing a model's weights on every invocation would cost seconds for the 4B model. A file rewritten
    in place changes its mtime, so a stale entry is never used."""
    st = path.stat()
    if st.st_size < _BIG:
        return file_sha256(path)
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache_path = home() / "cache" / _HASH_CACHE
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    if isinstance(cache.get(key), str):
        return cache[key]
    digest = file_sha256(path)
    cache[key] = digest
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache_path, json.dumps(cache, indent=0, sort_keys=True) + "\n")
    return digest


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsynced, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def dir_sha256(path: str | Path, patterns: tuple[str, ...] = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja")) -> str:
    """A content hash of a model or adapter folder: the names and contents of its weight and config files."""
    root = Path(path)
    h = hashlib.sha256()
    files = sorted({p for pat in patterns for p in root.glob(pat) if p.is_file()})
    for p in files:
        if p.name == "manifest.json":
            continue
        h.update(p.name.encode())
        h.update(_cached_file_sha256(p).encode())
    return h.hexdigest()


def describe_path(path: str | Path) -> dict[str, str]:
    """Provenance of a file or folder: its path and content hash."""
    p = Path(path)
    digest = file_sha256(p) if p.is_file() else dir_sha256(p)
    return {"path": str(p), "sha256": digest}
