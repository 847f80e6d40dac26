"""Shared fixtures. Tiers: pure tests need nothing; `tokenizer` needs the embedded default, Gemma 3 270M
(the users' family: gemma-3-4b-it's tokenizer, chat format and attention; converted once, cached under
artifacts/); `trained_adapter` trains a tiny adapter on it with the real trainer once per session;
`engine` is one real vLLM engine on it with that adapter, shared by every engine test.

The `smollm2_*` fixtures are SmolLM2-135M-Instruct, the named second model: a ChatML template with pad ==
eos (traps Gemma does not show) and a vLLM engine that starts and generates several times faster, for the
tests that start several engines or servers of their own (test_serve, test_interrupt, test_bench, the
two-writer test), which keeps the suite inside its time."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from patent_risk.evaluate.batch import Borrowed  # noqa: F401 - lends the shared engine to run_batch; the tests import it from here

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "data" / "demo" / "eval.jsonl"
TRAIN = ROOT / "data" / "demo" / "train.jsonl"
CHECK_CONTRACT = ROOT.parent / "shared" / "tools" / "check_contract.py"


def live_group_members(pgid: int, wait: float = 30.0) -> list[int]:
    """Processes of group pgid that are not zombies, after waiting up to `wait` s for them to exit. A
    killed server's children are reparented to init, which reaps them on its own schedule; a zombie
    holds no memory, port or CPU, so only live members count as left behind."""
    import time

    from patent_risk.runtime.procs import group_members

    deadline = time.monotonic() + wait
    while True:
        live = group_members(pgid)
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.2)



def check_contract(kind: str, path) -> subprocess.CompletedProcess:
    """Run shared/tools/check_contract.py (CI has shared/ beside the checkout; a bare clone may not)."""
    if not CHECK_CONTRACT.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHECK_CONTRACT} is missing in CI")
        pytest.skip(f"{CHECK_CONTRACT} is not beside this checkout")
    return subprocess.run([sys.executable, str(CHECK_CONTRACT), kind, str(path)], capture_output=True, text=True)


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    from patent_risk.runtime.embedded import ensure_embedded_model

    return ensure_embedded_model()


@pytest.fixture(scope="session")
def tokenizer(embedded_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model)


@pytest.fixture(scope="session")
def gemma_model() -> Path:
    """Gemma 3 270M by name (the default today; tests of Gemma's own traps say so)."""
    from patent_risk.runtime.embedded import GEMMA3_270M, ensure_embedded_model

    return ensure_embedded_model(model=GEMMA3_270M)


@pytest.fixture(scope="session")
def gemma_tokenizer(gemma_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma_model)


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    from patent_risk.runtime.embedded import SMOLLM2_135M, ensure_embedded_model

    return ensure_embedded_model(model=SMOLLM2_135M)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_model)


@pytest.fixture(scope="session")
def eval_records():
    from patent_risk.schemas.records import load_dataset

    return load_dataset(EVAL).records


@pytest.fixture(scope="session")
def short_eval(tmp_path_factory) -> Path:
    """The eval split's three-element records (29 of 147), in file order, lines unchanged: the shortest
    answers (about a third fewer output tokens than the split's mix), for the SmolLM2 tests whose subject is
    the run's mechanics (kills, retries, locks, servers, benchmarks) rather than the records."""
    import json

    lines = [line for line in EVAL.read_text(encoding="utf-8").splitlines()
             if line.strip() and len(json.loads(line)["elements"]) == 3]
    path = tmp_path_factory.mktemp("data") / "eval-3-elements.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def short_records(short_eval):
    from patent_risk.schemas.records import load_dataset

    return load_dataset(short_eval).records


# The tiny runs' recipe, pinned so that the demo config's choice (issue 16: 80 steps at 2e-4, a dev split) does
# not change the shared fixtures: one epoch over `limit` records at the earlier demo rate, which moves the
# adapter far enough from the base in 8 steps for the parity tests to tell them apart.
TINY_RECIPE = ("dev_size=0", "max_steps=-1", "epochs=1", "learning_rate=1e-3", "lr_scheduler=linear", "warmup_ratio=0.03")


def _train_tiny(out: Path, model: Path, limit: int, *extra: str) -> Path:
    from patent_risk.train.config import load_config
    from patent_risk.train.trainer import train

    cfg = load_config(None, [f"base_model={model}", f"train_data={TRAIN}", f"limit={limit}", "eval_fraction=0.0",
                             f"output_dir={out}", "save_steps=1000", "logging_steps=4", *TINY_RECIPE, *extra])
    return train(cfg, log=lambda s: None).adapter_dir


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory, embedded_model) -> Path:
    """A tiny real training run on the default model (16 records, 8 steps), exported as a vLLM-ready adapter; its
    checkpoint at step 4 is kept (tiny.checkpoints/checkpoint-4: a learning curve's point)."""
    return _train_tiny(tmp_path_factory.mktemp("adapter") / "tiny", embedded_model, 16, "save_steps=4", "save_total_limit=4")


@pytest.fixture(scope="session")
def smollm2_adapter(tmp_path_factory, smollm2_model) -> Path:
    """A tiny real training run on SmolLM2 (8 records, 4 steps) for the SmolLM2 engines and servers."""
    return _train_tiny(tmp_path_factory.mktemp("adapter") / "tiny-smollm2", smollm2_model, 8)


def _offline_engine(model: Path, adapter: Path):
    from patent_risk.runtime.engines import AdapterSpec, VllmOffline

    # KV cache sized from the model and the batch (cpu_env.kv_cache_bytes)
    return VllmOffline(str(model), AdapterSpec("tiny", str(adapter)), backend="outlines", max_model_len=1024)


@pytest.fixture(scope="session")
def engine(embedded_model, trained_adapter):
    """One vLLM engine on the default model (LoRA enabled, outlines structured-outputs backend) for every
    engine test."""
    eng = _offline_engine(embedded_model, trained_adapter)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def smollm2_engine(smollm2_model, smollm2_adapter):
    """The same on SmolLM2, for a module whose own processes run SmolLM2 (test_interrupt's reference run).
    Module-scoped: it is closed before the next module's engines start."""
    eng = _offline_engine(smollm2_model, smollm2_adapter)
    yield eng
    eng.close()


GUARDED_ENV = ("VLLM_", "OMP_", "LD_PRELOAD")  # VLLM_CPU_* included


def _guarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(GUARDED_ENV)}


@pytest.fixture(autouse=True)
def _engine_env_unchanged():
    """Fails a test that leaves a VLLM_*, OMP_* or LD_PRELOAD variable changed: every later engine in this
    process would run with it. Compared around each test function only. The deliberate process-wide
    settings of the session `engine` fixture (cpu_env.configure and vLLM's CPU platform write VLLM_CPU_*,
    LD_PRELOAD, ...) happen before the first snapshot: pytest sets up session and module fixtures before
    function ones."""
    before = _guarded_env()
    yield
    after = _guarded_env()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        pytest.fail(f"the test left {', '.join(changed)} changed in os.environ; restore it "
                    "(monkeypatch.setenv, or a snapshot of os.environ)", pytrace=False)
