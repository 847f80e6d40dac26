"""Starting, watching and stopping vLLM's OpenAI-compatible server (`vllm serve`) with LoRA modules.

On the CPU build the `vllm` console script is broken (STACK.md), so the same flags go through
`python -m vllm.entrypoints.openai.api_server`; the equivalent `vllm serve` line is printed for users.
State (pid, command, log, port) lives in artifacts/serve/NAME/. An API key reaches the server only through
its environment (VLLM_API_KEY, which vLLM reads when --api-key is absent): any user can read a process's
command line (`ps`, /proc/PID/cmdline), so the key is never in argv, in the printed line or in state.json.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from patent_risk.runtime import cpu_env
from patent_risk.runtime.artifacts import subdir
from patent_risk.runtime.embedded import resolve_model
from patent_risk.runtime.procs import create_time, same_process
from patent_risk.schemas.errors import UserError


@dataclass
class ServerConfig:
    model: str | None = None
    adapters: list[tuple[str, str]] = field(default_factory=list)  # (name, dir)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # given to the server as VLLM_API_KEY in its environment, never in its argv
    backend: str = "outlines"
    max_lora_rank: int | None = None  # None: the largest rank among the adapters (16 without one)
    max_model_len: int = 2048
    extra_args: list[str] = field(default_factory=list)
    name: str = "default"
    memory_utilization: float | None = None  # default: cpu_env's (host memory share on the CPU build)
    # An explicit KV cache (--kv-cache-memory-bytes). On the CPU build vLLM otherwise sizes it as
    # memory_utilization x the NUMA node's memory minus what the worker already holds after warm-up,
    # which goes negative (the engine fails to start) when the node is small or the worker large.
    kv_cache_bytes: int | None = None
    allow_other_base: bool = False  # serve the adapters on a --model that is not their base, on purpose


@dataclass
class ServerState:
    name: str
    pid: int
    url: str
    served_model: str
    adapters: list[str]
    backend: str
    command: list[str]
    log: str
    started_at: float
    api_key_set: bool = False  # whether the server requires a key; the key itself is never recorded
    # When the process started (psutil's create_time): `patent-risk serve stop` signals the pid only while it is still this
    # process, not another that was given the same pid after the server exited. None in older state files.
    pid_started: float | None = None


def _state_from_json(text: str) -> ServerState:
    """A state.json, also one written before a field was added (it takes its default)."""
    known = {f.name for f in fields(ServerState)}
    return ServerState(**{k: v for k, v in json.loads(text).items() if k in known})


API_KEY_ENV = "VLLM_API_KEY"

# Servers this process started, kept so they are reaped (not garbage-collected while running).
_CHILDREN: dict[int, subprocess.Popen] = {}


def state_dir(name: str) -> Path:
    return subdir("serve") / name


def lora_rank_of(cfg: ServerConfig) -> int:
    """The server's --max-lora-rank: the one given, else the largest of the adapters' own ranks."""
    from patent_risk.runtime.engine_args import adapters_lora_rank

    return cfg.max_lora_rank if cfg.max_lora_rank is not None else adapters_lora_rank(p for _, p in cfg.adapters)


def build_command(cfg: ServerConfig, model_path: str) -> list[str]:
    """The server's argv (python -m ... on the CPU build, `vllm serve` on CUDA)."""
    args = ["--model", model_path, "--host", cfg.host, "--port", str(cfg.port),
            "--max-model-len", str(cfg.max_model_len),
            "--structured-outputs-config", json.dumps(cpu_env.structured_outputs_config(cfg.backend))]
    if cpu_env.is_cpu_build():
        args += ["--dtype", cpu_env.default_dtype()]
    args += ["--gpu-memory-utilization", str(cfg.memory_utilization or cpu_env.default_memory_utilization())]
    # usage.prompt_tokens_details.cached_tokens in every answer: the prompt tokens the prefix cache served,
    # recorded per row by evaluate batch (a run's speed says whether its prefill was free)
    args += ["--enable-prompt-tokens-details"]
    if cfg.kv_cache_bytes:
        args += ["--kv-cache-memory-bytes", str(cfg.kv_cache_bytes)]
    if cfg.adapters:
        args += ["--enable-lora", "--max-lora-rank", str(lora_rank_of(cfg)), "--max-loras", str(len(cfg.adapters)),
                 "--lora-modules", *[f"{n}={p}" for n, p in cfg.adapters]]
    args += cfg.extra_args
    if cpu_env.is_cpu_build():
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args]
    return ["vllm", "serve", *args]


def server_env(cfg: ServerConfig, base: dict[str, str] | None = None, model_path: str | None = None) -> dict[str, str]:
    """The server's environment: ours, the CPU build's preload, the structured-outputs settings the offline
    engine gets too (cpu_env.structured_outputs_env: a grammar compile limit sized for the model's
    vocabulary, outlines' disk cache in artifacts/), and the API key as VLLM_API_KEY. vLLM gives up a
    compile after VLLM_REGEX_COMPILATION_TIMEOUT_S (default 5 s) and answers HTTP 500, while the abandoned
    compile goes on in its thread, so the client's retries only add load."""
    env = dict(os.environ if base is None else base)
    env.update(cpu_env.preload_env(env))
    env.update(cpu_env.structured_outputs_env(model_path, env))
    if cfg.api_key:
        env[API_KEY_ENV] = cfg.api_key
    if is_loopback(cfg.host):
        # vLLM's development endpoints, among them POST /reset_prefix_cache, which evaluate batch calls before a
        # run so that two arms on one server are measured alike (as vLLM's own benchmark sweep does). Only on a
        # loopback address: they also let a caller put the engine to sleep.
        env.setdefault(DEV_MODE_ENV, "1")
    return env


DEV_MODE_ENV = "VLLM_SERVER_DEV_MODE"


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def vllm_serve_line(cmd: list[str], api_key_set: bool = False) -> str:
    """The command as a user would type it with the `vllm` console script (a key shows as ***)."""
    args = cmd[3:] if cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] else cmd[2:]
    model = args[args.index("--model") + 1]
    rest = [a for i, a in enumerate(args) if not (a == "--model" or (i and args[i - 1] == "--model"))]
    return (f"{API_KEY_ENV}=*** " if api_key_set else "") + shlex.join(["vllm", "serve", model, *rest])


# vLLM's log prefix: "(EngineCore pid=12) ERROR 12-02 00:40:36 [core.py:1510] " (process and level optional)
_LOG_PREFIX = re.compile(r"^(?:\([\w.-]+ pid=\d+\)\s+)?(?:(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d "
                         r"\d\d:\d\d:\d\d(?:\.\d+)?\s+\[[^\]]*\]\s?)?")
# A traceback's final line: "ValueError: ...", "torch.OutOfMemoryError: ...", "pydantic_core._pydantic_core.ValidationError: ..."
_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Failure)(?::|$)")
_MEMORY = re.compile(r"out of memory|cannot allocate memory|oom-kill|\bKilled\b", re.IGNORECASE)
_NOT_A_CAUSE = ("Traceback", "During handling of the above exception", "The above exception was the direct cause")


def root_cause(log_text: str) -> str:
    """The line of a failed server's log that says why: the first exception raised (a traceback's final
    line, with the lines continuing its message), else the first ERROR line or memory message, else the
    last line. vLLM's engine re-raises a worker's error as "Engine core initialization failed. See root
    cause above", so the first exception, not the last, is the cause."""
    entries = []  # (level, message without vLLM's prefix)
    for raw in log_text.splitlines():
        m = _LOG_PREFIX.match(raw)
        entries.append((m.group(1), raw[m.end():].rstrip()))

    def is_header(i: int) -> bool:  # "EngineCore failed to start." just above its traceback
        return i + 1 < len(entries) and entries[i + 1][1].startswith("Traceback")

    for i, (_, msg) in enumerate(entries):
        if _EXCEPTION.match(msg):
            lines = [msg]
            for _, more in entries[i + 1:i + 6]:  # a message that goes on over indented lines (pydantic's does)
                if not more[:1].isspace() or not more.strip() or more.strip().startswith('File "'):
                    break
                lines.append(more.strip())
            return " ".join(lines)[:1000]
    for i, (level, msg) in enumerate(entries):
        if not msg or msg[0].isspace() or msg.startswith(_NOT_A_CAUSE):
            continue
        if (level in ("ERROR", "CRITICAL") and not is_header(i)) or (level not in ("DEBUG", "INFO") and _MEMORY.search(msg)):
            return msg[:1000]
    last = [msg for _, msg in entries if msg.strip()]
    return last[-1][:1000] if last else "(the log is empty)"


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}" + (" (out of memory?)" if returncode == -signal.SIGKILL else "")
    return f"exited with code {returncode}"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def health(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def read_state(name: str = "default") -> ServerState | None:
    path = state_dir(name) / "state.json"
    if not path.exists():
        return None
    return _state_from_json(path.read_text())


def _reap(pid: int) -> None:
    """Collect our own exited child: a zombie still answers signals and counts as a group member."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _alive(pid: int, started: float | None = None) -> bool:
    """``pid`` runs and (where ``started`` is known) is the process that started then."""
    _reap(pid)
    return same_process(pid, started)


def start(cfg: ServerConfig, *, timeout: float = 600.0, log: Callable[[str], None] = print) -> ServerState:
    """Start the server in its own session, wait until /health answers, record its state."""
    existing = read_state(cfg.name)
    if existing and _alive(existing.pid, existing.pid_started):
        raise UserError(f"server '{cfg.name}' is already running (pid {existing.pid}, {existing.url}); `patent-risk serve stop` first")
    from patent_risk.runtime.bases import settle_model

    cfg.model = settle_model(cfg.model, [p for _, p in cfg.adapters], allow_other_base=cfg.allow_other_base, log=log)
    model_path = resolve_model(cfg.model, log)
    env = server_env(cfg, model_path=model_path)
    key_set = bool(env.get(API_KEY_ENV))
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log(f"warning: binding {cfg.host}: the server is reachable from other machines" + ("" if key_set else " and has no --api-key"))
    if "--api-key" in cfg.extra_args or any(a.startswith("--api-key=") for a in cfg.extra_args):
        log("warning: --api-key after `--` puts the key on the server's command line, which every user can read "
            "(`ps`); pass it as PATENT_RISK_API_KEY instead")
    if not _port_free(cfg.host if cfg.host != "0.0.0.0" else "127.0.0.1", cfg.port):
        raise UserError(f"port {cfg.port} on {cfg.host} is in use; pass --port")
    from patent_risk.runtime.adapters import check_adapter_dir

    rank = lora_rank_of(cfg)
    for name, path in cfg.adapters:
        check_adapter_dir(path, rank)
    cmd = build_command(cfg, model_path)
    sdir = state_dir(cfg.name)
    sdir.mkdir(parents=True, exist_ok=True)
    log_path = sdir / "server.log"
    log(f"$ {vllm_serve_line(cmd, key_set)}")
    with open(log_path, "ab") as logf:
        log_start = logf.tell()  # the log is appended to: this run's part starts here
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    _CHILDREN[proc.pid] = proc
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    url = f"http://{host}:{cfg.port}"
    state = ServerState(cfg.name, proc.pid, url, model_path, [n for n, _ in cfg.adapters], cfg.backend, cmd,
                        str(log_path), time.time(), api_key_set=key_set, pid_started=create_time(proc.pid))
    (sdir / "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            with open(log_path, "rb") as f:
                f.seek(log_start)
                text = f.read().decode(errors="replace")
            _clear(cfg.name)
            _CHILDREN.pop(proc.pid, None)
            raise UserError(f"the server {_exit_reason(proc.returncode)} before answering: {root_cause(text)}\n"
                            f"end of {log_path}:\n{text[-1500:]}")
        if health(url):
            log(f"server '{cfg.name}' ready at {url} (pid {proc.pid}, log {log_path})")
            return state
        time.sleep(1.0)
    stop(cfg.name, log=log)
    raise UserError(f"the server did not answer {url}/health within {timeout:.0f} s; see {log_path}")


def _clear(name: str) -> None:
    path = state_dir(name) / "state.json"
    if path.exists():
        path.unlink()


def stop(name: str = "default", *, grace: float = 30.0, log: Callable[[str], None] = print) -> bool:
    """Stop exactly the process group `start` made; True when something was stopped."""
    state = read_state(name)
    if state is None:
        log(f"no server '{name}' recorded")
        return False
    running = _alive(state.pid)
    if running and not _alive(state.pid, state.pid_started):
        _clear(name)
        log(f"server '{name}' had exited: pid {state.pid} is now another process, left alone")
        return False
    if running:
        try:
            os.killpg(state.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.time() + grace
        while time.time() < deadline and _group_alive(state.pid):
            time.sleep(0.5)
        if _group_alive(state.pid):
            os.killpg(state.pid, signal.SIGKILL)
            time.sleep(0.5)
    _clear(name)
    child = _CHILDREN.pop(state.pid, None)
    if child is not None:
        child.wait()
    log(f"server '{name}' (pid {state.pid}) stopped")
    return True


def _group_alive(pgid: int) -> bool:
    _reap(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def status(name: str = "default") -> dict:
    state = read_state(name)
    if state is None:
        return {"name": name, "running": False}
    return {**asdict(state), "running": _alive(state.pid, state.pid_started), "healthy": health(state.url)}


def served_base_model(url: str, api_key: str | None = None) -> str:
    """The base model a running vLLM server serves, as its /v1/models lists it (the entry without a parent; its
    ``root`` is the model's path or hub id): the tokenizer that sizes and renders requests for it. A UserError
    when the server does not answer or its model is not readable from this machine."""
    import urllib.error
    import urllib.request

    from patent_risk.runtime.hub import is_hub_id

    req = urllib.request.Request(f"{url.rstrip('/')}/v1/models",
                                 headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            cards = json.loads(r.read()).get("data") or []
    except urllib.error.HTTPError as e:
        raise UserError(f"{url}/v1/models answered {e.code}" + ("; pass --api-key" if e.code == 401 else "")) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(f"no vLLM server answers at {url} ({e})") from None
    bases = [c for c in cards if not c.get("parent")]
    if not bases:
        raise UserError(f"{url}/v1/models lists no base model; pass --model with the tokenizer to use")
    root = str(bases[0].get("root") or bases[0].get("id"))
    if not Path(root).exists() and not is_hub_id(root):
        raise UserError(f"{url} serves {root}, which is not on this machine: pass --model with its tokenizer "
                        "(a local copy or its hub id)")
    return root


def served_backend(url: str) -> str | None:
    """The structured-outputs backend of a server `patent-risk serve start` recorded at this URL, if any."""
    root = subdir("serve")
    for path in root.glob("*/state.json"):
        state = _state_from_json(path.read_text())
        if state.url.rstrip("/") == url.rstrip("/") and _alive(state.pid):
            return state.backend
    return None
