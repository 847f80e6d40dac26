"""Hugging Face hub ids as local folders: a model named by its hub id (``google/gemma-3-4b-it``) is read from the
local Hugging Face cache (``HF_HOME``), downloaded into it when the hub is reachable and allowed, so that what is
hashed, rounded through NF4 or merged is a folder on disk, never a name."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from patent_risk.schemas.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# what a model folder needs: configs, tokenizer, weights (never the original checkpoints some repos carry too)
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.md", "*.html"]


def is_hub_id(value: str | None) -> bool:
    """``owner/name`` that is not a local path."""
    return bool(value) and not Path(str(value)).exists() and bool(_HUB_ID.match(str(value)))


def cached_folder(repo_id: str) -> Path | None:
    """The model's snapshot folder in the local Hugging Face cache, without any network (None: not cached)."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, allow_patterns=MODEL_FILES, local_files_only=True))
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and its kin: not in the cache
        return None
    return path if (path / "config.json").exists() else None


def model_folder(value: str, log: Callable[[str], None] = print) -> Path:
    """A local folder for ``value``: the folder itself, or a hub id's snapshot in the local Hugging Face cache
    (downloaded into it unless ``HF_HUB_OFFLINE`` is set). A gated, missing or unreachable model is a UserError
    that names it and says how to log in."""
    path = Path(value)
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"{path}: not a model folder (config.json missing)")
        return path
    if not _HUB_ID.match(value):
        raise UserError(f"{value}: neither a local model folder nor a Hugging Face model id (owner/name)")
    cached = cached_folder(value)
    if cached is not None:
        return cached
    import os

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    login = ("log in with `hf auth login` (or set HF_TOKEN) with an account that has accepted the model's licence on "
             f"https://huggingface.co/{value}")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise UserError(f"{value}: not in the local Hugging Face cache ({_cache_dir()}) and HF_HUB_OFFLINE is set; "
                        f"download it once where the hub is reachable (`hf download {value}`; {login})")
    log(f"downloading {value} into the Hugging Face cache ({_cache_dir()}) ...")
    try:
        return Path(snapshot_download(value, allow_patterns=MODEL_FILES))
    except GatedRepoError:
        raise UserError(f"{value}: gated on the Hugging Face hub and this machine is not allowed to read it: {login}") from None
    except RepositoryNotFoundError:
        raise UserError(f"{value}: no such model on the Hugging Face hub, or it is private: check the id, or {login}") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise UserError(f"{value}: not in the local Hugging Face cache ({_cache_dir()}) and the hub could not be read "
                        f"({type(e).__name__}); connect, or download it once with `hf download {value}` ({login})") from None


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)
