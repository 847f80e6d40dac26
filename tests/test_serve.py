"""The real vLLM OpenAI-compatible server on the embedded model with a trained adapter, on a free
loopback port; stopped whatever happens."""
import json
import os
import urllib.error
import urllib.request

import pytest

from evaluate.batch import BatchConfig, run_batch
from evaluate.engines import AdapterSpec, VllmServer
from schemas.output import load_schema, schema_errors, specialize
from serve.server import ServerConfig, free_port, start, status, stop

from .conftest import EVAL, live_group_members

pytestmark = pytest.mark.engine
KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(trained_adapter, embedded_model, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("PATENT_RISK_HOME", str(tmp_path_factory.mktemp("home")))
    cfg = ServerConfig(model=str(embedded_model), adapters=[("tiny", str(trained_adapter))], port=free_port(),
                       api_key=KEY, max_model_len=1024, name="pytest", memory_utilization=0.1)
    try:
        state = start(cfg, timeout=600, log=lambda s: None)
        yield state
    finally:
        stop("pytest", log=lambda s: None)


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


def test_server_binds_loopback_only(server):
    assert server.url.startswith("http://127.0.0.1:")
    cmd = server.command
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


def test_constrained_request_and_batch_through_the_server(server, embedded_model, eval_records, tmp_path):
    engine = VllmServer(server.url, "tiny", str(embedded_model), api_key=KEY, max_concurrency=4, backend=server.backend)
    rec = eval_records[0]
    from evaluate.requests import build_requests

    req = build_requests([rec], "v1", True, engine.count_tokens)[0]
    assert req.json_schema == specialize(load_schema("v1"), rec.element_ids)
    res = engine.generate([req])[0]
    obj = json.loads(res.raw_output)
    assert res.finish_reason == "stop" and not schema_errors(obj, "v1")
    assert [m["element_id"] for m in obj["matches"]] == rec.element_ids

    out = tmp_path / "server-run"
    cfg = BatchConfig(data=str(EVAL), out=str(out), constrained=True, model=str(embedded_model),
                      adapter=AdapterSpec("tiny", str(engine_adapter_path(server))), server=server.url, limit=6, chunk_size=3)
    summary = run_batch(cfg, lambda m: engine, log=lambda s: None, progress=False)
    assert summary.generated == 6
    info = json.loads((out / "run.json").read_text())
    assert info["engine"]["mode"] == "server" and info["engine"]["backend"] == "outlines"
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["finish_reason"] == "stop" for r in rows)


def engine_adapter_path(server):
    spec = server.command[server.command.index("--lora-modules") + 1]
    return spec.split("=", 1)[1]


def test_server_killed_mid_run_keeps_rows_then_resumes_elsewhere(server, embedded_model, tmp_path, monkeypatch):
    """A real server SIGKILLed while `evaluate batch --server` runs: a clear failure, every finished row
    kept, no process left; the same command against a live server resumes to exactly one row per sample."""
    import signal
    import threading
    import time

    from schemas.errors import UserError

    monkeypatch.setenv("PATENT_RISK_HOME", str(tmp_path))
    cfg = ServerConfig(model=str(embedded_model), port=free_port(), max_model_len=1024, name="short",
                       memory_utilization=0.1)
    state = start(cfg, timeout=600, log=lambda s: None)
    out = tmp_path / "run"
    results = out / "results.jsonl"
    bcfg = BatchConfig(data=str(EVAL), out=str(out), constrained=True, model=str(embedded_model), server=state.url,
                       limit=8, chunk_size=4)
    served = str(embedded_model)
    errors = []

    def run():
        eng = VllmServer(state.url, served, str(embedded_model), max_concurrency=1, max_retries=1, timeout=30)
        try:
            run_batch(bcfg, lambda m: eng, log=lambda s: None, progress=False)
        except UserError as e:
            errors.append(str(e))

    t = threading.Thread(target=run)
    t.start()
    try:
        deadline = time.monotonic() + 300
        while (not results.exists() or results.read_bytes().count(b"\n") < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(state.pid, signal.SIGKILL)
        t.join(120)
    finally:
        stop("short", log=lambda s: None)
    assert not t.is_alive()
    assert live_group_members(state.pid) == []
    assert status("short") == {"name": "short", "running": False}
    assert errors and "re-run the same command to resume" in errors[0], errors
    kept = results.read_bytes()
    n_kept = kept.count(b"\n")
    assert 2 <= n_kept < 8 and kept.endswith(b"\n")
    # the module's server serves the same base under the same name: resume there
    eng = VllmServer(server.url, served, str(embedded_model), api_key=KEY, max_concurrency=2)
    summary = run_batch(bcfg, lambda m: eng, log=lambda s: None, progress=False)
    assert summary.done_before == n_kept and summary.generated == 8 - n_kept
    final = results.read_bytes()
    assert final.startswith(kept)
    ids = [json.loads(x)["id"] for x in final.splitlines()]
    assert len(ids) == len(set(ids)) == 8


def test_transient_faults_are_retried(server, embedded_model, tmp_path):
    """HTTP 503s, a dropped connection, a slow answer and one past the client's timeout: the OpenAI
    client's retries absorb them all and every sample gets exactly one row."""
    from .faultproxy import FaultProxy

    faults = {1: "503", 2: "503", 4: "drop", 5: "slow:2", 7: "slow:12"}
    proxy = FaultProxy(server.url, lambda n: faults.get(n, "forward"))
    try:
        eng = VllmServer(proxy.url, "tiny", str(embedded_model), api_key=KEY, max_concurrency=2, max_retries=4, timeout=10)
        out = tmp_path / "run"
        cfg = BatchConfig(data=str(EVAL), out=str(out), constrained=True, model=str(embedded_model),
                          adapter=AdapterSpec("tiny", engine_adapter_path(server)), server=proxy.url, limit=8, chunk_size=4)
        summary = run_batch(cfg, lambda m: eng, log=lambda s: None, progress=False)
    finally:
        proxy.close()
    assert summary.generated == 8
    assert proxy.injected == {"503": 2, "drop": 1, "slow": 2}, proxy.injected
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == 8
    assert all(r["finish_reason"] == "stop" for r in rows)
    assert proxy.forwarded == 8 + 1  # every sample once, plus the slow answer the client had given up on


def test_persistent_5xx_fails_clearly_keeps_rows_and_resumes(server, embedded_model, tmp_path):
    from schemas.errors import UserError

    from .faultproxy import FaultProxy

    broken = {"on": True}
    proxy = FaultProxy(server.url, lambda n: "500" if broken["on"] and n > 3 else "forward")
    out = tmp_path / "run"
    cfg = BatchConfig(data=str(EVAL), out=str(out), constrained=True, model=str(embedded_model),
                      adapter=AdapterSpec("tiny", engine_adapter_path(server)), server=proxy.url, limit=8, chunk_size=8)
    try:
        eng = VllmServer(proxy.url, "tiny", str(embedded_model), api_key=KEY, max_concurrency=1, max_retries=2)
        with pytest.raises(UserError, match="InternalServerError.*re-run the same command"):
            run_batch(cfg, lambda m: eng, log=lambda s: None, progress=False)
        kept = (out / "results.jsonl").read_bytes()
        assert kept.count(b"\n") == 3  # the three answered requests, although their chunk of 8 failed
        # each failing request was tried 1 + 2 times; the one the pool had already started when the first
        # failed is let finish (and fails too); the rest were never sent
        assert proxy.injected["500"] in (3, 6) and proxy.posts == 3 + proxy.injected["500"], proxy.injected
        broken["on"] = False
        eng = VllmServer(proxy.url, "tiny", str(embedded_model), api_key=KEY, max_concurrency=2)
        summary = run_batch(cfg, lambda m: eng, log=lambda s: None, progress=False)
    finally:
        proxy.close()
    assert (summary.done_before, summary.generated) == (3, 5)
    final = (out / "results.jsonl").read_bytes()
    assert final.startswith(kept)
    ids = [json.loads(x)["id"] for x in final.splitlines()]
    assert len(ids) == len(set(ids)) == 8


def test_connection_refused_is_a_clear_error(embedded_model):
    from schemas.errors import UserError

    with pytest.raises(UserError, match="no vLLM server answers"):
        VllmServer(f"http://127.0.0.1:{free_port()}", "x", str(embedded_model), max_retries=0)


def test_bench_against_the_server(server, embedded_model, tmp_path):
    from serve.bench import run_bench, write_bench

    doc = run_bench(server.url, [server.served_model, "tiny"], str(EVAL), [False, True], [1, 2], 2,
                    str(embedded_model), api_key=KEY, log=lambda s: None)
    assert len(doc["results"]) == 2 * 2 * 2
    for r in doc["results"]:
        assert r["errors"] == 0 and r["output_tokens"] > 0
        assert 0 < r["ttft_ms"]["p50"] <= r["e2e_ms"]["p50"]
        assert r["output_tok_s"] > 0 and r["tpot_ms"]["p50"] > 0
    kinds = {q["kind"] for q in doc["ratios"]}
    assert {"tiny/" + server.served_model, "constrained/unconstrained"} <= kinds
    paths = write_bench(doc, tmp_path / "bench.json")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)


def test_crosscheck_with_vllms_serving_benchmark(server, embedded_model, tmp_path):
    """vLLM's own benchmark and serve bench send the same greedy requests: they must count the same
    output tokens, and both must see every request succeed."""
    from serve.crosscheck import crosscheck, to_markdown

    doc = crosscheck(server.url, "tiny", str(EVAL), 2, 3, str(embedded_model), api_key=KEY, log=lambda s: None)
    ours, theirs = doc["serve_bench"], doc["vllm_bench"]
    assert ours["errors"] == 0 and theirs["errors"] == 0 and theirs["requests"] == 3
    assert ours["output_tokens"] == theirs["output_tokens"] > 0
    assert theirs["output_tok_s"] > 0 and theirs["ttft_ms"]["p50"] > 0
    assert "vllm bench serve" in to_markdown(doc)
