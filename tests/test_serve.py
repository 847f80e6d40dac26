"""The real vLLM OpenAI-compatible server with a trained adapter, on a free loopback port; stopped whatever
happens. On SmolLM2 (conftest: the second model), whose server starts and answers several times faster than
Gemma's: these tests start two servers and send about seventy requests, on the eval split's three-element
records (conftest.short_eval: the shortest answers)."""
import dataclasses
import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from patent_risk.evaluate.batch import BatchConfig, run_batch
from patent_risk.runtime import cpu_env
from patent_risk.runtime.engines import AdapterSpec, VllmServer
from patent_risk.schemas.output import load_schema, schema_errors, specialize
from patent_risk.serve.server import ServerConfig, free_port, start, status, stop

from .conftest import live_group_members

pytestmark = pytest.mark.engine
KEY = "test-key-123"
# A deadline, not a duration: about 100 s here; a slower machine only takes longer to fail.
START_TIMEOUT = 1200
START_OUTPUT: list[str] = []  # what the module server's start() printed


def _kv_cache_bytes(model, max_seqs: int) -> int | None:
    """An explicit KV cache for max_seqs sequences of 1024 tokens. Left to --gpu-memory-utilization, vLLM's
    CPU worker takes that share of the NUMA node's memory minus what the worker holds after warm-up; on a
    small node or a large worker that goes negative and the engine fails to start (0.1 of a 10 GiB node
    left -0.43 GiB here), which also depends on what else runs at the time."""
    return cpu_env.kv_cache_bytes(str(model), cpu_env.default_dtype(), 1024, max_seqs)


@pytest.fixture(scope="module")
def server(smollm2_adapter, smollm2_model, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("PATENT_RISK_HOME", str(tmp_path_factory.mktemp("home")))
    cfg = ServerConfig(model=str(smollm2_model), adapters=[("tiny", str(smollm2_adapter))], port=free_port(),
                       api_key=KEY, max_model_len=1024, name="pytest", memory_utilization=0.1,
                       kv_cache_bytes=_kv_cache_bytes(smollm2_model, 16))
    try:
        state = start(cfg, timeout=START_TIMEOUT, log=START_OUTPUT.append)
        yield state
    finally:
        stop("pytest", log=lambda s: None)


@pytest.fixture(scope="module")
def request_seconds(server, smollm2_model, short_records):
    """How long one real constrained request takes on this machine now, its schema already compiled (the
    first request compiles it; every short record shares it): the tests' client timeouts and slow faults
    scale with it instead of assuming a fast CPU."""
    from patent_risk.runtime.requests import build_requests

    eng = VllmServer(server.url, "tiny", str(smollm2_model), api_key=KEY, max_concurrency=1)
    first, second = build_requests(short_records[-2:], "v1", True, eng.count_tokens)
    eng.generate([first])
    t0 = time.perf_counter()
    eng.generate([second])
    took = time.perf_counter() - t0
    eng.close()
    logging.getLogger(__name__).info("one constrained request took %.2f s", took)
    return took


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _get(url, key=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_models_lists_the_adapter_and_key_is_required(server):
    models = _get(f"{server.url}/v1/models", KEY)["data"]
    tiny = [m for m in models if m["id"] == "tiny"]
    assert tiny and tiny[0]["parent"] == server.served_model
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(f"{server.url}/v1/models")
    assert e.value.code == 401
    e.value.close()


def test_api_key_reaches_the_server_only_through_its_environment(server):
    """Issue 12, item 6: with a key set, no process's command line holds it (`ps` shows every user's), nor
    state.json, start's output or the server's log; the server still requires it."""
    members = live_group_members(server.pid, wait=0)  # the API server, its engine core and worker
    assert server.pid in members and len(members) >= 2, members
    assert "vllm.entrypoints.openai.api_server" in psutil.Process(server.pid).cmdline()
    leaks = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])  # None or [] where it exited meanwhile or is a kernel thread
        if KEY in cmdline:
            leaks.append((proc.pid, cmdline))
    assert leaks == []
    assert psutil.Process(server.pid).environ().get("VLLM_API_KEY") == KEY
    state_text = (Path(server.log).parent / "state.json").read_text()
    assert KEY not in state_text and json.loads(state_text)["api_key_set"] is True
    assert any(line.startswith("$ VLLM_API_KEY=*** vllm serve ") for line in START_OUTPUT), START_OUTPUT
    assert not [line for line in START_OUTPUT if KEY in line]
    assert KEY not in Path(server.log).read_text(errors="replace")
    assert KEY not in json.dumps(status("pytest"))
    assert _get(f"{server.url}/v1/models", KEY)["data"]
    for wrong in (None, "not-the-key"):
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(f"{server.url}/v1/models", wrong)
        assert e.value.code == 401
        e.value.close()


def test_server_binds_loopback_only(server):
    assert server.url.startswith("http://127.0.0.1:")
    cmd = server.command
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


def test_constrained_request_and_batch_through_the_server(server, smollm2_model, short_eval, short_records, tmp_path):
    engine = VllmServer(server.url, "tiny", str(smollm2_model), api_key=KEY, max_concurrency=4, backend=server.backend)
    rec = short_records[0]
    from patent_risk.runtime.requests import build_requests

    req = build_requests([rec], "v1", True, engine.count_tokens)[0]
    assert req.json_schema == specialize(load_schema("v1"), rec.element_ids)
    res = engine.generate([req])[0]
    obj = json.loads(res.raw_output)
    assert res.finish_reason == "stop" and not schema_errors(obj, "v1")
    assert [m["element_id"] for m in obj["matches"]] == rec.element_ids

    out = tmp_path / "server-run"
    cfg = BatchConfig(data=str(short_eval), out=str(out), constrained=True, model=str(smollm2_model),
                      adapter=AdapterSpec("tiny", str(engine_adapter_path(server))), server=server.url, limit=4, chunk_size=2)
    summary = run_batch(cfg, lambda m: engine, log=lambda s: None, progress=False)
    assert summary.generated == 4
    info = json.loads((out / "run.json").read_text())
    assert info["engine"]["mode"] == "server" and info["engine"]["backend"] == "outlines"
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["finish_reason"] == "stop" for r in rows)


def engine_adapter_path(server):
    spec = server.command[server.command.index("--lora-modules") + 1]
    return spec.split("=", 1)[1]


def test_server_killed_mid_run_keeps_rows_then_resumes_elsewhere(server, request_seconds, smollm2_model,
                                                                  smollm2_adapter, short_eval, tmp_path, monkeypatch):
    """A real server SIGKILLed while `evaluate batch --server` runs: a clear failure, every finished row
    kept, no process left; the same command against a live server resumes to exactly one row per sample."""
    import signal
    import threading

    from patent_risk.schemas.errors import UserError

    monkeypatch.setenv("PATENT_RISK_HOME", str(tmp_path))
    # beside the module's server: a KV cache of its own size, whatever the host's memory and the other's use.
    # With an adapter like the module's: vLLM's CPU build runs LoRA eagerly, while a server without one
    # compiles the model with torch.compile first (80 s here); the run below asks for the base model.
    cfg = ServerConfig(model=str(smollm2_model), adapters=[("tiny", str(smollm2_adapter))], port=free_port(),
                       max_model_len=1024, name="short",
                       memory_utilization=0.1, kv_cache_bytes=_kv_cache_bytes(smollm2_model, 4))
    state = start(cfg, timeout=START_TIMEOUT, log=lambda s: None)
    timeout = max(30.0, 10 * request_seconds)  # only a hung request meets it: the kill resets connections
    out = tmp_path / "run"
    results = out / "results.jsonl"
    bcfg = BatchConfig(data=str(short_eval), out=str(out), constrained=True, model=str(smollm2_model),
                       server=state.url, limit=6, chunk_size=3)
    served = str(smollm2_model)
    errors = []

    def run():
        eng = VllmServer(state.url, served, str(smollm2_model), max_concurrency=1, max_retries=1, timeout=timeout)
        try:
            run_batch(bcfg, lambda m: eng, log=lambda s: None, progress=False)
        except UserError as e:
            errors.append(str(e))

    t = threading.Thread(target=run)
    t.start()
    try:
        deadline = time.monotonic() + max(300.0, 60 * request_seconds)
        while (not results.exists() or results.read_bytes().count(b"\n") < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(state.pid, signal.SIGKILL)
        t.join(2 * timeout + 60)  # 1 + max_retries attempts
    finally:
        stop("short", log=lambda s: None)
    assert not t.is_alive()
    assert live_group_members(state.pid) == []
    assert status("short") == {"name": "short", "running": False}
    assert errors and "re-run the same command to resume" in errors[0], errors
    kept = results.read_bytes()
    n_kept = kept.count(b"\n")
    assert 2 <= n_kept < 6 and kept.endswith(b"\n")
    # the module's server serves the same base under the same name: the same command with --server pointing
    # there resumes (the run's identity holds the server's version, asked of the server the config names)
    eng = VllmServer(server.url, served, str(smollm2_model), api_key=KEY, max_concurrency=2)
    summary = run_batch(dataclasses.replace(bcfg, server=server.url), lambda m: eng, log=lambda s: None, progress=False)
    assert summary.done_before == n_kept and summary.generated == 6 - n_kept
    final = results.read_bytes()
    assert final.startswith(kept)
    ids = [json.loads(x)["id"] for x in final.splitlines()]
    assert len(ids) == len(set(ids)) == 6


def test_transient_faults_are_retried(server, request_seconds, smollm2_model, short_eval, tmp_path):
    """HTTP 503s, a dropped connection, a slow answer and one past the client's timeout: the OpenAI
    client's retries absorb them all and every sample gets exactly one row. The timeout and the delays
    scale with one request's measured time (two run at once, so an answer takes up to about twice it)."""
    from .faultproxy import FaultProxy

    timeout = max(10.0, 6 * request_seconds)
    delay = max(2.0, 2 * request_seconds)  # delay + an answer (two at once: up to about 2x) stays under the timeout
    faults = {1: "503", 2: "503", 4: "drop", 5: f"slow:{delay:.1f}", 7: f"slow:{timeout + delay:.1f}"}
    proxy = FaultProxy(server.url, lambda n: faults.get(n, "forward"))
    try:
        eng = VllmServer(proxy.url, "tiny", str(smollm2_model), api_key=KEY, max_concurrency=2, max_retries=4,
                         timeout=timeout)
        out = tmp_path / "run"
        cfg = BatchConfig(data=str(short_eval), out=str(out), constrained=True, model=str(smollm2_model),
                          adapter=AdapterSpec("tiny", engine_adapter_path(server)), server=proxy.url, limit=8, chunk_size=4)
        summary = run_batch(cfg, lambda m: eng, log=lambda s: None, progress=False)
        # the answer the client gave up on is still forwarded once its delay is over: wait for it
        assert proxy.wait_idle(2 * timeout + delay)
    finally:
        proxy.close()
    assert summary.generated == 8
    assert proxy.injected == {"503": 2, "drop": 1, "slow": 2}, proxy.injected
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == 8
    assert all(r["finish_reason"] == "stop" for r in rows)
    assert proxy.forwarded == 8 + 1  # every sample once, plus the slow answer the client had given up on


def test_persistent_5xx_fails_clearly_keeps_rows_and_resumes(server, smollm2_model, short_eval, tmp_path):
    from patent_risk.schemas.errors import UserError

    from .faultproxy import FaultProxy

    broken = {"on": True}
    proxy = FaultProxy(server.url, lambda n: "500" if broken["on"] and n > 3 else "forward")
    out = tmp_path / "run"
    cfg = BatchConfig(data=str(short_eval), out=str(out), constrained=True, model=str(smollm2_model),
                      adapter=AdapterSpec("tiny", engine_adapter_path(server)), server=proxy.url, limit=6, chunk_size=6)
    try:
        eng = VllmServer(proxy.url, "tiny", str(smollm2_model), api_key=KEY, max_concurrency=1, max_retries=2)
        with pytest.raises(UserError, match="InternalServerError.*re-run the same command"):
            run_batch(cfg, lambda m: eng, log=lambda s: None, progress=False)
        kept = (out / "results.jsonl").read_bytes()
        assert kept.count(b"\n") == 3  # the three answered requests, although their chunk of 6 failed
        # each failing request was tried 1 + 2 times; the one the pool had already started when the first
        # failed is let finish (and fails too); the rest were never sent
        assert proxy.injected["500"] in (3, 6) and proxy.posts == 3 + proxy.injected["500"], proxy.injected
        broken["on"] = False
        eng = VllmServer(proxy.url, "tiny", str(smollm2_model), api_key=KEY, max_concurrency=2)
        summary = run_batch(cfg, lambda m: eng, log=lambda s: None, progress=False)
    finally:
        proxy.close()
    assert (summary.done_before, summary.generated) == (3, 3)
    final = (out / "results.jsonl").read_bytes()
    assert final.startswith(kept)
    ids = [json.loads(x)["id"] for x in final.splitlines()]
    assert len(ids) == len(set(ids)) == 6


def test_connection_refused_is_a_clear_error(smollm2_model):
    from patent_risk.schemas.errors import UserError

    with pytest.raises(UserError, match="no vLLM server answers"):
        VllmServer(f"http://127.0.0.1:{free_port()}", "x", str(smollm2_model), max_retries=0)


def test_bench_against_the_server(server, smollm2_model, short_eval, tmp_path):
    from patent_risk.bench.serving import run_bench, write_bench

    doc = run_bench(server.url, [server.served_model, "tiny"], str(short_eval), [False, True], [2], 2,
                    str(smollm2_model), api_key=KEY, log=lambda s: None, repeats=2, requests_at={2: 3})
    assert len(doc["results"]) == 2 * 2 * 1
    assert doc["warm_up"]["schemas"] >= 1
    for r in doc["results"]:
        assert r["errors"] == 0 and r["output_tokens"] > 0 and r["requests"] == 3 and r["passes"] == 2
        assert 0 < r["ttft_ms"]["p50"] <= r["e2e_ms"]["p50"]
        assert r["output_tok_s"] > 0 and r["tpot_ms"]["p50"] > 0
        assert r["request_throughput_min"] <= r["request_throughput"] <= r["request_throughput_max"]
        # the prefix cache emptied before every pass (a pass's requests still share their common prefix)
        assert r["prefix_cache"] == ["reset"] and all(isinstance(n, int) for n in r["cached_prompt_tokens"])
    # per served model, the arms alternate which goes first
    firsts = [p["constrained"] for p in doc["passes"] if p["served_model"] == "tiny" and p["order"] in (0, 2)]
    assert firsts == [False, True]
    kinds = {q["kind"] for q in doc["ratios"]}
    assert {"tiny/" + server.served_model, "constrained/unconstrained"} <= kinds
    for q in doc["ratios"]:
        if q["kind"] == "constrained/unconstrained":
            assert len(q["paired"]) == 2 and q["request_ratio"] > 0
    paths = write_bench(doc, tmp_path / "bench.json")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)


def test_crosscheck_with_vllms_serving_benchmark(server, smollm2_model, short_eval, tmp_path):
    """vLLM's own benchmark and serve bench send the same greedy requests: they must count the same
    output tokens, and both must see every request succeed."""
    from patent_risk.bench.crosscheck import crosscheck, to_markdown

    doc = crosscheck(server.url, "tiny", str(short_eval), 2, 2, str(smollm2_model), api_key=KEY, log=lambda s: None)
    ours, theirs = doc["serve_bench"], doc["vllm_bench"]
    assert ours["errors"] == 0 and theirs["errors"] == 0 and theirs["requests"] == 2
    assert ours["output_tokens"] == theirs["output_tokens"] > 0
    assert theirs["output_tok_s"] > 0 and theirs["ttft_ms"]["p50"] > 0
    assert "vllm bench serve" in to_markdown(doc)
