"""The direction of dependencies (issue 17) and the one namespace (issue 27): import-linter's contracts in
pyproject.toml hold for the package as the wheel lays it out (tests/namespace.py), and a wrong-way import (a
lower layer importing a higher one) or a part imported by its bare top-level name (`from evaluate import ...`,
which resolves to Hugging Face's `evaluate` where that is installed) breaks them, naming the import."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from .conftest import ROOT
from .namespace import NAMESPACE, namespace_tree, package_dirs

LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path, tmp: Path) -> subprocess.CompletedProcess:
    tree = namespace_tree(root, tmp / "tree")
    shutil.copy2(root / "pyproject.toml", tree / "pyproject.toml")
    # import-linter puts its working directory first on sys.path: the links, not the editable install, are found
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=300)


def test_the_contracts_are_kept(tmp_path):
    done = _lint(ROOT, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_every_folder_is_mapped_into_the_namespace_and_placed_in_a_layer():
    with open(ROOT / "pyproject.toml", "rb") as f:
        config = tomllib.load(f)
    mapped = package_dirs(ROOT)
    folders = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert set(mapped.values()) == folders, (sorted(mapped.values()), sorted(folders))
    parts = {name.removeprefix(NAMESPACE + ".") for name in mapped} - {NAMESPACE}
    assert all(mapped[f"{NAMESPACE}.{p}"] == p for p in parts)  # each part keeps its folder's name
    contracts = config["tool"]["importlinter"]["contracts"]
    layered = {m.strip() for layer in contracts[0]["layers"] for m in layer.split("|")}
    assert layered == parts, layered ^ parts
    assert set(contracts[1]["forbidden_modules"]) == parts  # no part by its bare name
    # the wheel's packages: every mapped part and the data folders inside them, nothing outside the namespace
    packages = config["tool"]["setuptools"]["packages"]
    assert set(mapped) <= set(packages) and all(p.split(".")[0] == NAMESPACE for p in packages)


def test_a_wrong_way_import_and_a_bare_top_level_import_break_them(tmp_path):
    src = tmp_path / "src"
    for folder in package_dirs(ROOT).values():
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", src / "pyproject.toml")
    engines = src / "runtime" / "engines.py"
    # inside a function, as most of the project's imports are: it counts all the same
    engines.write_text(engines.read_text(encoding="utf-8")
                       + "\n\ndef _wrong_way():\n    from patent_risk.evaluate import scoring\n", encoding="utf-8")
    prompt = src / "schemas" / "prompt.py"
    prompt.write_text(prompt.read_text(encoding="utf-8") + "\n\ndef _bare():\n    import train.config\n", encoding="utf-8")
    done = _lint(src, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "0 kept, 2 broken" in done.stdout, done.stdout
    assert "patent_risk.runtime.engines -> patent_risk.evaluate.scoring" in done.stdout, done.stdout
    assert "patent_risk.schemas.prompt -> train" in done.stdout, done.stdout
