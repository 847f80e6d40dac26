"""The namespace as the wheel lays it out, built from pyproject.toml's [tool.setuptools.package-dir] out of symlinks:
import-linter (grimp) finds a package's modules by walking the folder of its ``__init__.py``, so it cannot follow
package-dir's mapping of the repository's top-level folders into ``patent_risk``; a tree of links it can."""
from __future__ import annotations

import tomllib
from pathlib import Path

NAMESPACE = "patent_risk"


def package_dirs(root: Path) -> dict[str, str]:
    """pyproject.toml's mapping: import name -> folder, relative to the repository."""
    with open(root / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def namespace_tree(root: Path, dest: Path) -> Path:
    """dest/patent_risk with each mapped part a link to its folder under ``root``; returns dest (to put first on
    sys.path, or to run lint-imports in)."""
    ns = dest / NAMESPACE
    ns.mkdir(parents=True)
    for name, folder in package_dirs(root).items():
        if name == NAMESPACE:
            for f in (root / folder).glob("*.py"):
                (ns / f.name).symlink_to(f)
        else:
            (ns / name.removeprefix(NAMESPACE + ".")).symlink_to(root / folder, target_is_directory=True)
    return dest
