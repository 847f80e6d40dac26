"""`serve`: vLLM's OpenAI-compatible server with LoRA modules (a thin layer over serve.server)."""
from __future__ import annotations

import json
import click

from schemas.cli_edge import ErrorReportingGroup


@click.group(cls=ErrorReportingGroup)
def main() -> None:
    """Serve a base model with LoRA adapters through vLLM's OpenAI-compatible server.

    \b
    serve start --adapter demo=artifacts/adapters/demo
    serve status
    serve stop
    """


def _adapters(values):
    out = []
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{v!r}: expected NAME=DIR")
        out.append((name, path))
    return out


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--model", default=None, help="Base model: HF id or local folder (default: the embedded SmolLM2-135M-Instruct).")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR", help="LoRA module served under NAME. Repeatable.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback by default; another address exposes the server.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--api-key", default=None, envvar="PATENT_RISK_API_KEY", help="Require this bearer key on every request.")
@click.option("--backend", default="outlines", show_default=True, type=click.Choice(["outlines", "xgrammar", "guidance"]),
              help="Structured-outputs backend (engine-wide).")
@click.option("--max-lora-rank", default=16, show_default=True, type=int)
@click.option("--max-model-len", default=2048, show_default=True, type=int)
@click.option("--name", default="default", show_default=True, help="Name of this server's state (to run several).")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for /health.")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def start(model, adapters, host, port, api_key, backend, max_lora_rank, max_model_len, name, timeout, extra) -> None:
    """Start `vllm serve --enable-lora` and wait until it answers. Arguments after `--` go to vLLM unchanged
    (e.g. `-- --tensor-parallel-size 2`)."""
    from .server import ServerConfig, start as start_server

    cfg = ServerConfig(model=model, adapters=_adapters(adapters), host=host, port=port, api_key=api_key, backend=backend,
                       max_lora_rank=max_lora_rank, max_model_len=max_model_len, extra_args=list(extra), name=name)
    state = start_server(cfg, timeout=timeout, log=click.echo)
    click.echo(state.url)


@main.command()
@click.option("--name", default="default", show_default=True)
def stop(name) -> None:
    """Stop the server `serve start` started (its whole process group, nothing else)."""
    from .server import stop as stop_server

    stop_server(name, log=click.echo)


@main.command()
@click.option("--name", default="default", show_default=True)
def status(name) -> None:
    """Print the recorded server's state and whether it answers /health."""
    from .server import status as server_status

    click.echo(json.dumps(server_status(name), indent=2))


if __name__ == "__main__":
    main()
