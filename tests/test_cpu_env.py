"""CPU settings chosen in code (runtime/cpu_env.py)."""
import os
from unittest import mock

from patent_risk.runtime import cpu_env


def test_tcmalloc_is_prepended_once_where_installed(monkeypatch):
    monkeypatch.delenv("PATENT_RISK_NO_PRELOAD", raising=False)
    lib = cpu_env.find_tcmalloc()
    got = cpu_env.preload_env({"LD_PRELOAD": "/x/libgomp.so"})
    if lib is None or not cpu_env.is_cpu_build():
        assert got == {}
    else:
        assert os.path.exists(lib) and got == {"LD_PRELOAD": f"{lib}:/x/libgomp.so"}
        assert cpu_env.preload_env({}) == {"LD_PRELOAD": lib}
    assert cpu_env.preload_env({"LD_PRELOAD": "/opt/libtcmalloc.so.4"}) == {}
    monkeypatch.setenv("PATENT_RISK_NO_PRELOAD", "1")
    assert cpu_env.preload_env({}) == {}


def test_offline_binds_every_core(monkeypatch):
    for key in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setenv("LD_PRELOAD", "")
    with mock.patch.dict(os.environ):  # configure() writes os.environ: put back all it set, faked cores and all
        chosen = cpu_env.configure(offline=True)
    if cpu_env.is_cpu_build():
        assert chosen["VLLM_CPU_OMP_THREADS_BIND"] == "0-3" and chosen["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    else:
        assert chosen == {}


def test_kv_cache_is_sized_from_the_model_and_the_batch(smollm2_model, gemma_model):
    per_token = cpu_env.kv_bytes_per_token(str(smollm2_model), "float32")
    assert per_token == 2 * 30 * 3 * 64 * 4  # SmolLM2-135M: 30 layers, 3 KV heads of 64, fp32
    assert cpu_env.kv_bytes_per_token(str(gemma_model), "float32") == 2 * 18 * 1 * 256 * 4  # Gemma 3 270M: 18 layers, 1 KV head of 256
    kv = cpu_env.kv_cache_bytes(str(smollm2_model), "float32", 2048, 32)
    if cpu_env.is_cpu_build():
        assert kv == min(per_token * (2048 * 32 + cpu_env.KV_HEADROOM_TOKENS), cpu_env.available_memory() // 2)
        # one sequence: vLLM keeps a null block, so exactly max_model_len tokens is refused at start-up
        assert cpu_env.kv_cache_bytes(str(smollm2_model), "float32", 1024, 1) == per_token * (1024 + cpu_env.KV_HEADROOM_TOKENS)
    assert cpu_env.kv_bytes_per_token("/nonexistent", "float32") is None
