"""The package as users install it (issue 17): a wheel built from the repository, installed without -e into a
fresh venv that reuses the installed dependencies (--no-deps, and a .pth naming this venv's site-packages, so
torch, vLLM and polars are never downloaded again), carries its schema files, chat templates and configs:
`evaluate validate`, `evaluate baseline` and `evaluate report` run from it on the demo data, and neither the
build nor the install prints a warning."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import ROOT, check_contract

EVAL = ROOT / "data" / "demo" / "eval.jsonl"
TRAIN = ROOT / "data" / "demo" / "train.jsonl"


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "PATENT_RISK_HOME")}
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=300, **kw)


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "warn" in line.lower()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with the wheel installed (not editable); returns its bin folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: building in the checkout would leave build/ and *.egg-info there
    tracked = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT)  # untracked: not yet committed
    files = tracked.stdout.split("\0") if tracked.returncode == 0 else []
    if files:
        for rel in filter(None, files):
            if (ROOT / rel).is_file():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, src / rel)
    else:  # not a git checkout: everything but what make demo / make test produce
        shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", "artifacts", ".git", "build", "dist", "*.egg-info",
                                                                "__pycache__"))
    built = _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp / "dist", src])
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert _warnings(built.stdout + built.stderr) == []
    wheel = next((tmp / "dist").glob("*.whl"))
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv])
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The dependencies as installed here; not the editable project (a path in a .pth is not itself scanned for .pth files)
    (site / "_reuse_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index",
                "--disable-pip-version-check", wheel])
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    assert _warnings(pip.stdout + pip.stderr) == []
    return venv / "bin"


def test_the_wheel_carries_its_data_and_imports_from_itself(installed, tmp_path):
    probe = ("import json, schemas, runtime.embedded as e, train.config as c\n"
             "from schemas.output import load_schema\n"
             "print(json.dumps({'schemas': schemas.__file__, 'v1': bool(load_schema('v1')), 'v2': bool(load_schema('v2')),"
             " 'template': e.TEMPLATES.joinpath('gemma-3-4b-it.jinja').is_file(), 'config': str(c.DEFAULT_CONFIG),"
             " 'configs': sorted(p.name for p in c.DEFAULT_CONFIG.parent.glob('*.yaml'))}))")
    done = _run([installed / "python", "-c", probe], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    venv = installed.parent
    assert Path(got["schemas"]).is_relative_to(venv) and not Path(got["schemas"]).is_relative_to(ROOT), got
    assert got["v1"] and got["v2"] and got["template"], got
    assert Path(got["config"]).is_relative_to(venv)
    assert {"demo.yaml", "seed.yaml", "recipe_search.yaml"} <= set(got["configs"])
    config = _run([installed / "train", "qlora", "--print-config"], cwd=tmp_path)
    assert config.returncode == 0 and "learning_rate" in config.stdout, config.stderr


def test_evaluate_validate_baseline_and_report_run_from_the_wheel(installed, tmp_path):
    valid = _run([installed / "evaluate", "validate", EVAL], cwd=tmp_path)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "147" in valid.stdout
    run = tmp_path / "majority"
    base = _run([installed / "evaluate", "baseline", "--train", TRAIN, "--data", EVAL, "--out", run], cwd=tmp_path)
    assert base.returncode == 0, base.stdout + base.stderr
    report = _run([installed / "evaluate", "report", run, "--out", tmp_path / "report"], cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    assert (tmp_path / "report" / "report.html").stat().st_size > 0
    done = check_contract("metrics", tmp_path / "report" / "metrics.json")
    assert done.returncode == 0, done.stdout + done.stderr
    # installed, the artifacts folder is the current directory's (never site-packages)
    home = _run([installed / "python", "-c", "from runtime.artifacts import home; print(home())"], cwd=tmp_path)
    assert Path(home.stdout.strip()) == tmp_path / "artifacts", home.stdout + home.stderr
