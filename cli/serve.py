"""`patent-risk serve`: vLLM's OpenAI-compatible server with LoRA modules (a thin layer over serve.server)."""
from __future__ import annotations

import json

import click

from patent_risk.cli.edge import ErrorReportingGroup
from patent_risk.schemas.labels import SCHEMA_NAMES


@click.group(cls=ErrorReportingGroup)
def main() -> None:
    """Serve a base model with LoRA adapters through vLLM's OpenAI-compatible server.

    \b
    patent-risk serve start --adapter demo=artifacts/adapters/demo
    patent-risk serve status
    patent-risk serve stop
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
@click.option("--model", default=None,
              help="Base model: HF id, local folder, or an embedded model's name (gemma-3-270m, smollm2). Default: the "
                   "first adapter's own base (its manifest.json, else adapter_config.json); without an adapter, the "
                   "embedded Gemma 3 270M. A model that is not every adapter's base (nor made from it) is refused.")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR", help="LoRA module served under NAME. Repeatable.")
@click.option("--allow-other-base", is_flag=True, help="Serve the adapters on a --model that is not their base, on purpose.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback by default; another address exposes the server.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--api-key", default=None, envvar="PATENT_RISK_API_KEY", metavar="KEY",
              help="Require this bearer key on every request. The server gets it in its environment (VLLM_API_KEY), "
                   "never on its command line, and it is not printed or recorded; but a key typed here as --api-key "
                   "is visible to `ps` in this shell's process list: prefer `export PATENT_RISK_API_KEY=...`.")
@click.option("--backend", default="outlines", show_default=True, type=click.Choice(["outlines", "xgrammar", "guidance"]),
              help="Structured-outputs backend (engine-wide).")
@click.option("--max-lora-rank", default=None, type=int, help="vLLM's --max-lora-rank (default: the adapters' largest r).")
@click.option("--max-model-len", default=2048, show_default=True, type=int)
@click.option("--name", default="default", show_default=True, help="Name of this server's state (to run several).")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for /health.")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def start(model, adapters, allow_other_base, host, port, api_key, backend, max_lora_rank, max_model_len, name, timeout,
          extra) -> None:
    """Start `vllm serve --enable-lora` and wait until it answers. Arguments after `--` go to vLLM unchanged
    (e.g. `-- --tensor-parallel-size 2`)."""
    from patent_risk.serve.server import ServerConfig
    from patent_risk.serve.server import start as start_server

    cfg = ServerConfig(model=model, adapters=_adapters(adapters), host=host, port=port, api_key=api_key, backend=backend,
                       max_lora_rank=max_lora_rank, max_model_len=max_model_len, extra_args=list(extra), name=name,
                       allow_other_base=allow_other_base)
    state = start_server(cfg, timeout=timeout, log=click.echo)
    click.echo(state.url)


@main.command()
@click.option("--name", default="default", show_default=True)
def stop(name) -> None:
    """Stop the server `patent-risk serve start` started (its whole process group, nothing else)."""
    from patent_risk.serve.server import stop as stop_server

    stop_server(name, log=click.echo)


@main.command()
@click.option("--name", default="default", show_default=True)
def status(name) -> None:
    """Print the recorded server's state and whether it answers /health."""
    from patent_risk.serve.server import status as server_status

    click.echo(json.dumps(server_status(name), indent=2))


@main.command()
@click.option("--url", required=True, help="The server, e.g. http://127.0.0.1:8000.")
@click.option("--served-model", "served_models", multiple=True, required=True,
              help="A model name the server serves (the base's path or an adapter's name). Repeatable; the first is the reference.")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Dataset whose prompts are sent.")
@click.option("--arms", type=click.Choice(["both", "constrained", "unconstrained"]), default="both", show_default=True)
@click.option("--schema", "schema_name", default="v1", show_default=True, type=click.Choice(SCHEMA_NAMES))
@click.option("--concurrency", default="1,4,16", show_default=True, help="Comma-separated concurrency levels.")
@click.option("--num-requests", default=32, show_default=True, type=int, help="Requests per pass (the dataset's first N records).")
@click.option("--requests-at", "requests_at", multiple=True, metavar="CONCURRENCY=N",
              help="Another number of requests at one concurrency level, e.g. 1=24 (fewer where each takes long). Repeatable.")
@click.option("--repeats", default=1, show_default=True, type=int,
              help="Passes per served model x arm x concurrency; the arms alternate which goes first, and the tables give "
              "the median pass with its min-max and each repeat's paired constrained/unconstrained ratio.")
@click.option("--keep-prefix-cache", is_flag=True,
              help="Do not empty the server's prefix cache before each pass (by default it is: POST /reset_prefix_cache, "
              "which `serve start` enables on a loopback address), so that no arm is served the prompts the other sent.")
@click.option("--model", default=None, help="Model whose tokenizer sizes max_tokens (default: the model the server serves, "
              "from its /v1/models).")
@click.option("--api-key", default=None, envvar="PATENT_RISK_API_KEY", metavar="KEY",
              help="The server's bearer key (visible to `ps` when typed here; prefer PATENT_RISK_API_KEY).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSON file; .md and .png are written beside it.")
def bench(url, served_models, data, arms, schema_name, concurrency, num_requests, requests_at, repeats, keep_prefix_cache,
          model, api_key, out) -> None:
    """Throughput and latency (TTFT, TPOT, ITL, end to end at p50/p90/p99) of a running server, for every
    served model x arm x concurrency, with the constrained/unconstrained ratio measured alike: every schema
    compiled before the first timed pass, the prefix cache emptied before each pass, the arms alternating.

    \b
    The constraint's cost through the server at concurrency 1, 8 and 32, three repeats:
      patent-risk serve bench --url http://127.0.0.1:8000 --served-model demo --data data/demo/eval.jsonl \\
          --concurrency 1,8,32 --num-requests 96 --requests-at 1=24 --requests-at 8=48 --repeats 3 --out bench/c.json"""
    from pathlib import Path

    from patent_risk.bench.serving import run_bench, to_markdown, write_bench
    from patent_risk.bench.sweep import parse_limit_at
    from patent_risk.runtime.embedded import resolve_model
    from patent_risk.serve.server import served_base_model

    if model is None:
        model = served_base_model(url, api_key)
        click.echo(f"tokenizer: {model} (the model {url} serves)")
    levels = [int(c) for c in concurrency.split(",") if c.strip()]
    arm_list = {"both": [False, True], "constrained": [True], "unconstrained": [False]}[arms]
    doc = run_bench(url.rstrip("/"), list(served_models), data, arm_list, levels, num_requests, resolve_model(model, click.echo),
                    schema_name, api_key, log=click.echo, repeats=repeats,
                    requests_at=parse_limit_at(requests_at, "--requests-at", "CONCURRENCY=N"),
                    reset_cache=not keep_prefix_cache)
    paths = write_bench(doc, Path(out))
    click.echo(to_markdown(doc))
    click.echo("written: " + ", ".join(map(str, paths)))


@main.command()
@click.option("--url", required=True, help="The server, e.g. http://127.0.0.1:8000.")
@click.option("--served-model", required=True, help="The model name to benchmark (base path or adapter name).")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Dataset whose prompts are sent.")
@click.option("--concurrency", default=16, show_default=True, type=int)
@click.option("--num-requests", default=32, show_default=True, type=int)
@click.option("--model", default=None, help="Model whose tokenizer renders the prompts (default: the model the server "
              "serves, from its /v1/models).")
@click.option("--api-key", default=None, envvar="PATENT_RISK_API_KEY", metavar="KEY",
              help="The server's bearer key (visible to `ps` when typed here; prefer PATENT_RISK_API_KEY).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSON file; a .md table is written beside it.")
def crosscheck(url, served_model, data, concurrency, num_requests, model, api_key, out) -> None:
    """Run one unconstrained configuration through both `patent-risk serve bench` and vLLM's own serving benchmark
    (`vllm bench serve`, in-process) against the same server and compare their figures side by side."""
    from pathlib import Path

    from patent_risk.bench.crosscheck import crosscheck as run
    from patent_risk.bench.crosscheck import to_markdown
    from patent_risk.runtime.embedded import resolve_model
    from patent_risk.serve.server import served_base_model

    if model is None:
        model = served_base_model(url, api_key)
        click.echo(f"tokenizer: {model} (the model {url} serves)")
    doc = run(url.rstrip("/"), served_model, data, concurrency, num_requests, resolve_model(model, click.echo),
              api_key=api_key, log=click.echo)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(to_markdown(doc), encoding="utf-8")
    click.echo(to_markdown(doc))
    click.echo(f"written: {path}, {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
