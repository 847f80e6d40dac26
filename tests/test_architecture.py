"""The direction of dependencies (issue 17): import-linter's layers contract in pyproject.toml holds for the
repository, and a wrong-way import (a lower layer importing a higher one) breaks it, naming the import."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT

PACKAGES = ("cli", "bench", "train", "evaluate", "serve", "runtime", "datagen", "schemas")
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_layers_contract_is_kept():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout
    # every package of the project is in the contract: a new top-level package must be placed in a layer
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert found == set(PACKAGES), found


def test_a_wrong_way_import_breaks_it(tmp_path):
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    engines = tmp_path / "runtime" / "engines.py"
    # inside a function, as most of the project's imports are: it counts all the same
    engines.write_text(engines.read_text(encoding="utf-8") + "\n\ndef _wrong_way():\n    from evaluate import scoring\n",
                       encoding="utf-8")
    done = _lint(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout and "runtime.engines -> evaluate.scoring" in done.stdout, done.stdout
