"""Starting, watching and stopping vLLM's OpenAI-compatible server (`vllm serve`) with LoRA modules.

On the CPU build the `vllm` console script is broken (STACK.md), so the same flags go through
`python -m vllm.entrypoints.openai.api_server`; the equivalent `vllm serve` line is printed for users.
State (pid, command, log, port) lives in artifacts/serve/NAME/.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from schemas.artifacts import subdir
from schemas.embedded import resolve_model
from schemas.errors import UserError

from . import cpu_env


@dataclass
class ServerConfig:
    model: str | None = None
    adapters: list[tuple[str, str]] = field(default_factory=list)  # (name, dir)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    backend: str = "outlines"
    max_lora_rank: int = 16
    max_model_len: int = 2048
    extra_args: list[str] = field(default_factory=list)
    name: str = "default"
    memory_utilization: float | None = None  # default: cpu_env's (host memory share on the CPU build)


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


# Servers this process started, kept so they are reaped (not garbage-collected while running).
_CHILDREN: dict[int, subprocess.Popen] = {}


def state_dir(name: str) -> Path:
    return subdir("serve") / name


def build_command(cfg: ServerConfig, model_path: str) -> list[str]:
    """The server's argv (python -m ... on the CPU build, `vllm serve` on CUDA)."""
    args = ["--model", model_path, "--host", cfg.host, "--port", str(cfg.port),
            "--max-model-len", str(cfg.max_model_len), "--structured-outputs-config.backend", cfg.backend]
    if cpu_env.is_cpu_build():
        args += ["--dtype", cpu_env.default_dtype()]
    args += ["--gpu-memory-utilization", str(cfg.memory_utilization or cpu_env.default_memory_utilization())]
    if cfg.adapters:
        args += ["--enable-lora", "--max-lora-rank", str(cfg.max_lora_rank), "--max-loras", str(len(cfg.adapters)),
                 "--lora-modules", *[f"{n}={p}" for n, p in cfg.adapters]]
    if cfg.api_key:
        args += ["--api-key", cfg.api_key]
    args += cfg.extra_args
    if cpu_env.is_cpu_build():
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args]
    return ["vllm", "serve", *args]


def vllm_serve_line(cmd: list[str]) -> str:
    """The command as a user would type it with the `vllm` console script."""
    args = cmd[3:] if cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] else cmd[2:]
    model = args[args.index("--model") + 1]
    rest = [a for i, a in enumerate(args) if not (a == "--model" or (i and args[i - 1] == "--model"))]
    return shlex.join(["vllm", "serve", model, *rest])


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
    return ServerState(**json.loads(path.read_text()))


def _reap(pid: int) -> None:
    """Collect our own exited child: a zombie still answers signals and counts as a group member."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _alive(pid: int) -> bool:
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(cfg: ServerConfig, *, timeout: float = 600.0, log: Callable[[str], None] = print) -> ServerState:
    """Start the server in its own session, wait until /health answers, record its state."""
    existing = read_state(cfg.name)
    if existing and _alive(existing.pid):
        raise UserError(f"server '{cfg.name}' is already running (pid {existing.pid}, {existing.url}); `serve stop` first")
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log(f"warning: binding {cfg.host}: the server is reachable from other machines" + ("" if cfg.api_key else " and has no --api-key"))
    if not _port_free(cfg.host if cfg.host != "0.0.0.0" else "127.0.0.1", cfg.port):
        raise UserError(f"port {cfg.port} on {cfg.host} is in use; pass --port")
    from train.export import check_adapter_dir

    for name, path in cfg.adapters:
        check_adapter_dir(path, cfg.max_lora_rank)
    model_path = resolve_model(cfg.model, log)
    cmd = build_command(cfg, model_path)
    sdir = state_dir(cfg.name)
    sdir.mkdir(parents=True, exist_ok=True)
    log_path = sdir / "server.log"
    log(f"$ {vllm_serve_line(cmd)}")
    env = dict(os.environ)
    env.update(cpu_env.preload_env(env))
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    _CHILDREN[proc.pid] = proc
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    url = f"http://{host}:{cfg.port}"
    state = ServerState(cfg.name, proc.pid, url, model_path, [n for n, _ in cfg.adapters], cfg.backend, cmd,
                        str(log_path), time.time())
    (sdir / "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            _clear(cfg.name)
            _CHILDREN.pop(proc.pid, None)
            raise UserError(f"the server exited with code {proc.returncode} before answering; end of {log_path}:\n{tail}")
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
    if _alive(state.pid):
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
    return {**asdict(state), "running": _alive(state.pid), "healthy": health(state.url)}


def served_backend(url: str) -> str | None:
    """The structured-outputs backend of a server `serve start` recorded at this URL, if any."""
    root = subdir("serve")
    for path in root.glob("*/state.json"):
        state = ServerState(**json.loads(path.read_text()))
        if state.url.rstrip("/") == url.rstrip("/") and _alive(state.pid):
            return state.backend
    return None
