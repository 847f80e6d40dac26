"""The package as users install it (issues 17 and 27): a wheel built from the repository, installed without -e into
a fresh venv that reuses the installed dependencies (--no-deps, and a .pth naming this venv's site-packages, so
torch, vLLM and polars are never downloaded again; Hugging Face's `evaluate` 0.4.6 is one of them, from the dev
extra), carries its schema files, chat templates and configs: `evaluate validate`, `evaluate baseline` and
`evaluate report` run from it on the demo data, and neither the build nor the install prints a warning.

Issue 27: the wheel is one namespace, `patent_risk`, and two commands, `patent-risk` and `evaluate`: Hugging
Face's `evaluate` stays what `import evaluate` finds, a user's own evaluate.py and train.py in the working folder
change nothing, and vLLM loads the project's plugins from the installed wheel."""
from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
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


def _wheel(installed: Path) -> Path:
    return next((installed.parent.parent / "dist").glob("*.whl"))


def test_the_wheel_is_one_namespace_and_two_commands(installed):
    with zipfile.ZipFile(_wheel(installed)) as whl:
        names = whl.namelist()
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt")).rsplit("/", 1)[0]
        top_level = whl.read(f"{info}/top_level.txt").decode().split()
        entry_points = configparser.ConfigParser(delimiters=("=",))
        entry_points.read_string(whl.read(f"{info}/entry_points.txt").decode())
    assert {n.split("/")[0] for n in names} == {"patent_risk", info}, sorted({n.split("/")[0] for n in names})
    assert top_level == ["patent_risk"]
    assert set(entry_points["console_scripts"]) == {"patent-risk", "evaluate"}  # no `serve` (Ray's), no `train`
    assert dict(entry_points["vllm.general_plugins"]) == {
        "patent_risk_cpu_lora": "patent_risk.runtime.cpu_lora:register",
        "patent_risk_outlines_cache": "patent_risk.runtime.outlines_cache:register",
        "patent_risk_cpu_grammar": "patent_risk.runtime.cpu_grammar:register"}
    assert not (installed / "serve").exists() and not (installed / "train").exists()


def test_hugging_face_evaluate_is_what_import_evaluate_finds(installed, tmp_path):
    probe = ("import importlib.util, json, evaluate, patent_risk.evaluate.batch as b\n"
             "print(json.dumps({'origin': importlib.util.find_spec('evaluate').origin, 'version': evaluate.__version__,"
             " 'load': callable(getattr(evaluate, 'load', None)), 'ours': b.__file__}))")
    done = _run([installed / "python", "-c", probe], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["version"] == "0.4.6" and got["load"], got
    # Hugging Face's, as installed among the dependencies: neither this repository's evaluate/ nor the wheel's
    assert Path(got["origin"]) == Path(sysconfig.get_paths()["purelib"]) / "evaluate" / "__init__.py", got
    assert Path(got["ours"]).is_relative_to(installed.parent), got


def _users_folder(tmp_path: Path) -> Path:
    """A folder like an ML repository's: its own evaluate.py and train.py, which fail loudly if anything imports them."""
    folder = tmp_path / "users_repo"
    folder.mkdir()
    for name in ("evaluate", "train", "serve", "cli", "schemas", "runtime"):
        (folder / f"{name}.py").write_text(f"raise ImportError('the user\\'s own {name}.py was imported')\n")
    return folder


def test_every_command_answers_help_from_a_users_folder(installed, tmp_path):
    folder = _users_folder(tmp_path)
    # python -c puts the working folder first on sys.path, as a user's own script does for its folder
    walk = ("import click, json\n"
            "from click.testing import CliRunner\n"
            "from patent_risk.cli.main import main\n"
            "def walk(cmd, path):\n"
            "    yield path\n"
            "    if isinstance(cmd, click.Group):\n"
            "        for n in cmd.list_commands(None):\n"
            "            yield from walk(cmd.get_command(None, n), [*path, n])\n"
            "out = {}\n"
            "for path in walk(main, []):\n"
            "    for flag in ('-h', '--help'):\n"
            "        r = CliRunner().invoke(main, [*path, flag], prog_name='patent-risk')\n"
            "        out[' '.join([*path, flag])] = [r.exit_code, r.output.startswith('Usage: patent-risk')]\n"
            "print(json.dumps(out))\n")
    done = _run([installed / "python", "-c", walk], cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    helps = json.loads(done.stdout)
    assert {k: v for k, v in helps.items() if v != [0, True]} == {}
    subcommands = {k.rsplit(" ", 1)[0] for k in helps}
    assert {"train", "train qlora", "evaluate batch", "evaluate curve", "serve start", "serve bench", "demo", "compare",
            "recipe", "datagen", "bench schema-compile"} <= subcommands, sorted(subcommands)
    # the console scripts themselves, and python -m, from the same folder
    for cmd in ([installed / "patent-risk", "--help"], [installed / "evaluate", "-h"], [installed / "python", "-m", "patent_risk", "-h"],
                [installed / "python", "-m", "patent_risk", "evaluate", "batch", "--help"]):
        shown = _run(cmd, cwd=folder)
        assert shown.returncode == 0 and shown.stdout.startswith("Usage: "), (cmd, shown.stdout[-2000:], shown.stderr[-2000:])
    for cmd, prog in (("patent-risk", "patent-risk"), ("evaluate", "evaluate")):
        version = _run([installed / cmd, "--version"], cwd=folder)
        assert version.returncode == 0 and version.stdout.startswith(f"{prog} 0."), version.stdout + version.stderr


def test_vllm_loads_the_plugins_from_the_installed_wheel(installed, tmp_path):
    probe = ("import json, sys\n"
             "from vllm.plugins import load_general_plugins\n"
             "load_general_plugins()\n"
             "from patent_risk.runtime import cpu_lora, outlines_cache\n"
             "print(json.dumps({'files': [cpu_lora.__file__, outlines_cache.__file__],"
             " 'cache': outlines_cache.is_installed(), 'ops': cpu_lora.is_installed()}))")
    done = _run([installed / "python", "-c", probe], cwd=_users_folder(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(Path(f).is_relative_to(installed.parent) for f in got["files"]), got
    assert got["cache"] and got["ops"], got  # each plugin's register() ran: vLLM's functions are replaced


def test_the_wheel_carries_its_data_and_imports_from_itself(installed, tmp_path):
    probe = ("import json, patent_risk.schemas as schemas, patent_risk.runtime.embedded as e, patent_risk.train.config as c\n"
             "from patent_risk.schemas.output import load_schema\n"
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
    config = _run([installed / "patent-risk", "train", "qlora", "--print-config"], cwd=tmp_path)
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
    home = _run([installed / "python", "-c", "from patent_risk.runtime.artifacts import home; print(home())"], cwd=tmp_path)
    assert Path(home.stdout.strip()) == tmp_path / "artifacts", home.stdout + home.stderr
