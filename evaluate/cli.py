"""`evaluate`: validate datasets, run batch evaluations, write reports (a thin layer over the library)."""
from __future__ import annotations

from pathlib import Path

import click

from schemas.cli_edge import ErrorReportingGroup


def _adapter(value: str | None):
    if not value:
        return None
    from .engines import AdapterSpec

    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise click.BadParameter("expected NAME=DIR, e.g. --adapter demo=artifacts/adapters/demo")
    return AdapterSpec(name, path)


@click.group(cls=ErrorReportingGroup)
def main() -> None:
    """Evaluate a patent-risk model: constrained against unconstrained decoding, scored per CONTRACT.md.

    \b
    evaluate validate data/demo/eval.jsonl
    evaluate batch --data data/demo/eval.jsonl --adapter demo=artifacts/adapters/demo --constrained --out artifacts/runs/c
    evaluate report artifacts/runs/u artifacts/runs/c --out artifacts/reports/demo
    """


@main.command()
@click.argument("file", type=click.Path())
@click.option("--skip-bad", is_flag=True, help="Report bad lines but accept the rest (exit 0 if any record is good).")
def validate(file, skip_bad) -> None:
    """Check a dataset against CONTRACT.md section 1; print every problem as file:line: field: problem."""
    from schemas.records import load_dataset

    data = load_dataset(file, skip_bad=skip_bad)
    for p in data.skipped:
        click.echo(f"skipped: {p}", err=True)
    n_el = sum(len(r.elements) for r in data.records)
    labelled = sum(r.label is not None for r in data.records)
    click.echo(f"{file}: ok: {len(data.records)} records, {n_el} elements, {labelled} labelled, "
               f"{len({r.patent_id for r in data.records})} patents" + (f", {len(data.skipped)} line(s) skipped" if data.skipped else ""))


@main.command()
@click.option("--data", required=True, type=click.Path(), help="Dataset JSONL (CONTRACT.md section 1).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory; an existing one is resumed.")
@click.option("--constrained/--unconstrained", required=True, help="Decode with the per-record JSON-schema constraint, or free.")
@click.option("--model", default=None, help="Base model: HF id or local folder (default: the embedded SmolLM2-135M-Instruct).")
@click.option("--adapter", default=None, metavar="NAME=DIR", help="LoRA adapter served as a LoRA module (not merged).")
@click.option("--schema", "schema_name", default="v1", show_default=True, type=click.Choice(["v1", "v2"]), help="Target output schema.")
@click.option("--backend", default="outlines", show_default=True, type=click.Choice(["outlines", "xgrammar", "guidance"]),
              help="vLLM structured-outputs backend (engine-wide; outlines = outlines-core).")
@click.option("--server", default=None, metavar="URL", help="Use a running `vllm serve` (e.g. http://127.0.0.1:8000) instead of the offline engine.")
@click.option("--api-key", default=None, envvar="PATENT_RISK_API_KEY", help="The server's API key.")
@click.option("--max-concurrency", default=8, show_default=True, help="With --server: requests in flight at once.")
@click.option("--max-retries", default=4, show_default=True,
              help="With --server: retries per request on connection errors, timeouts, 408/429/5xx (the OpenAI client's backoff).")
@click.option("--request-timeout", default=300.0, show_default=True, help="With --server: seconds before a request is retried.")
@click.option("--limit", type=int, default=None, help="Only the first N records.")
@click.option("--chunk-size", type=int, default=32, show_default=True, help="Records decoded together; results are written after each chunk.")
@click.option("--max-model-len", type=int, default=2048, show_default=True)
@click.option("--gpu-memory-utilization", type=float, default=None,
              help="Offline engine: share of GPU memory vLLM may take. On the CPU build the default sizes the KV cache "
                   "from the model and --chunk-size instead (a chunk of full-length sequences, at most half the free memory).")
@click.option("--skip-bad", is_flag=True, help="Leave out bad dataset lines (each is reported) instead of refusing the file.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def batch(data, out, constrained, model, adapter, schema_name, backend, server, api_key, max_concurrency, max_retries,
          request_timeout, limit, chunk_size, max_model_len, gpu_memory_utilization, skip_bad, no_progress) -> None:
    """Run a dataset through vLLM into a run directory (results.jsonl + run.json).

    \b
    Offline (default): vLLM in this process, the adapter as a LoRA module.
    --server URL: a running `vllm serve`; --adapter NAME=DIR names the served LoRA module (NAME is the
    model in requests; DIR is hashed for provenance). The structured-outputs backend is the server's.
    """
    from .batch import BatchConfig, run_batch
    from .engines import VllmOffline, VllmServer

    spec = _adapter(adapter)
    cfg = BatchConfig(data=data, out=out, constrained=constrained, model=model, adapter=spec, schema_name=schema_name,
                      backend=backend, server=server, limit=limit, chunk_size=chunk_size, max_model_len=max_model_len,
                      skip_bad=skip_bad)
    if server:
        from serve.server import served_backend

        def make_engine(model_path):
            served = spec.name if spec else model_path
            return VllmServer(server, served, model_path, api_key=api_key, max_concurrency=max_concurrency,
                              max_retries=max_retries, timeout=request_timeout, backend=served_backend(server))
    else:
        def make_engine(model_path):
            return VllmOffline(model_path, spec, backend=backend, max_model_len=max_model_len,
                               gpu_memory_utilization=gpu_memory_utilization, max_batch=chunk_size)
    summary = run_batch(cfg, make_engine, log=click.echo, progress=not no_progress)
    if summary.generated:
        click.echo(f"{summary.run_dir}: {summary.generated} samples in {summary.seconds:.0f} s "
                   f"({summary.generated / summary.seconds:.2f} samples/s, {summary.output_tokens / summary.seconds:.1f} output tok/s); "
                   f"finish reasons {summary.finish_reasons}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Writes metrics.json, report.md, report.html here.")
@click.option("--baseline", default=None, help="Reference run name for comparisons (default: the first run).")
@click.option("--by", multiple=True, help="Slice every metric by a field: patent_id or meta.PATH; a numeric field into bins with "
              "meta.PATH:EDGE,EDGE,... (e.g. meta.boundary_distance:0.5,1,2). Repeatable.")
def report(run_dirs, out, baseline, by) -> None:
    """Score runs and compare them side by side (CONTRACT.md section 4)."""
    from .report import write_report

    rep = write_report([Path(d) for d in run_dirs], Path(out), baseline=baseline, by=list(by))
    for w in getattr(rep, "warnings", []) or []:
        click.echo(f"warning: {w}", err=True)
    click.echo(rep.summary_markdown)
    click.echo(f"\nreport: {Path(out) / 'report.html'}\nmarkdown: {Path(out) / 'report.md'}\nmetrics: {Path(out) / 'metrics.json'}")


if __name__ == "__main__":
    main()
