"""CPU settings chosen in code (serve/cpu_env.py)."""
import os

from serve import cpu_env


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
    chosen = cpu_env.configure(offline=True)
    if cpu_env.is_cpu_build():
        assert chosen["VLLM_CPU_OMP_THREADS_BIND"] == "0-3" and chosen["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    else:
        assert chosen == {}
