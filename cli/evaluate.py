"""`evaluate` (also `patent-risk evaluate`): validate datasets, run batch evaluations, write reports (a thin layer over the library)."""
from __future__ import annotations

from pathlib import Path

import click

from patent_risk.cli.edge import ErrorReportingGroup, version_option
from patent_risk.schemas.labels import SCHEMA_NAMES
from patent_risk.schemas.risk_rules import RISK_RULES


MODEL_HELP = ("Base model: HF id, local folder, or an embedded model's name (gemma-3-270m, smollm2). Default: the "
              "adapter's own base (its manifest.json, else adapter_config.json's base_model_name_or_path); without "
              "an adapter, the embedded Gemma 3 270M. A model that is neither the adapter's base nor made from it "
              "(`patent-risk train nf4-base`, `train merge`) is refused before the engine starts.")
SCHEMA_HELP = ("Target output schema (docs/formats.md): v1, v2 (reasons) or v3 (element first). Default: the one the "
               "adapter was trained to write (its manifest.json), else v1.")
ALLOW_OTHER_HELP = "Decode the adapter on a --model that is not its base (nor made from it), on purpose."
PROMPT_HELP = ("A Jinja template of the user turn over the record's fields (the format `patent-risk train qlora "
               "--prompt-template` takes). Default: the template the adapter was trained with (its manifest.json), else "
               "the built-in prompt. Its hash is part of the run's identity; both arms get the same prompt.")
ENGINE_ARG_HELP = ("Offline engine: one of vLLM's own engine arguments (EngineArgs), e.g. max_num_seqs=8, "
                   "tensor_parallel_size=2, enforce_eager=true; the value is read as JSON, else as text. Repeatable. "
                   "max_lora_rank defaults to the adapter's r. Recorded in run.json; those that can change outputs "
                   "(all but scheduling, parallelism, memory and compilation) are part of the run's identity.")


def _engine_args(pairs, server: str | None = None) -> dict:
    if not pairs:
        return {}
    if server:
        raise click.UsageError("--engine-arg is for the offline engine; a server's are set at its start "
                               "(patent-risk serve start ... -- --max-num-seqs 8)")
    from patent_risk.runtime.engine_args import parse_engine_args

    return parse_engine_args(pairs)


def _adapter(value: str | None):
    if not value:
        return None
    from patent_risk.runtime.engines import AdapterSpec

    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise click.BadParameter("expected NAME=DIR, e.g. --adapter demo=artifacts/adapters/demo")
    return AdapterSpec(name, path)


@click.group(cls=ErrorReportingGroup)
@version_option
def main() -> None:
    """Evaluate a patent-risk model: constrained against unconstrained decoding, scored as docs/formats.md section 4 says.

    \b
    evaluate validate data/demo/eval.jsonl
    evaluate batch --data data/demo/eval.jsonl --adapter demo=artifacts/adapters/demo --constrained --out artifacts/runs/c
    evaluate report artifacts/runs/u artifacts/runs/c --out artifacts/reports/demo
    """


@main.command()
@click.argument("file", type=click.Path())
@click.option("--skip-bad", is_flag=True, help="Report bad lines but accept the rest (exit 0 if any record is good).")
def validate(file, skip_bad) -> None:
    """Check a dataset against docs/formats.md section 1; print every problem as file:line: field: problem."""
    from patent_risk.schemas.records import load_dataset

    data = load_dataset(file, skip_bad=skip_bad)
    skipped = data.skipped_lines()
    for line in skipped:
        click.echo(f"skipped: {line}", err=True)
    n_el = sum(len(r.elements) for r in data.records)
    labelled = sum(r.label is not None for r in data.records)
    click.echo(f"{file}: ok: {len(data.records)} records, {n_el} elements, {labelled} labelled, "
               f"{len({r.patent_id for r in data.records})} patents" + (f", {len(skipped)} line(s) skipped" if skipped else ""))


@main.command()
@click.option("--data", required=True, type=click.Path(), help="Dataset JSONL (docs/formats.md section 1).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory; an existing one is resumed.")
@click.option("--constrained/--unconstrained", default=None, help="Decode with the per-record JSON-schema constraint, or free.")
@click.option("--both", is_flag=True,
              help="Both arms on one engine (one start instead of two): OUT-constrained, then OUT-unconstrained, each "
                   "an ordinary run directory.")
@click.option("--model", default=None, help=MODEL_HELP)
@click.option("--adapter", default=None, metavar="NAME=DIR", help="LoRA adapter served as a LoRA module (not merged).")
@click.option("--allow-other-base", is_flag=True, help=ALLOW_OTHER_HELP)
@click.option("--engine-arg", "engine_arg", multiple=True, metavar="KEY=VALUE", help=ENGINE_ARG_HELP)
@click.option("--prompt-template", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE", help=PROMPT_HELP)
@click.option("--schema", "schema_name", default=None, type=click.Choice(SCHEMA_NAMES), help=SCHEMA_HELP)
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
@click.option("--merge", "merged", is_flag=True,
              help="Offline only: merge the adapter into the base (cached under artifacts/merged/) and run without LoRA. "
                   "Same outputs (evaluate bench compares them); faster on vLLM's CPU build, where the LoRA ops cost "
                   "about 30% of the throughput.")
@click.option("--label-probs/--no-label-probs", default=True, show_default=True,
              help="Each row records, at each decision (risk_level, every element's match), the probability of "
                   "each label and the label mass (runtime/label_probs.py). It changes no output. Through --server: "
                   "vLLM's logprob_token_ids extension; a server that refuses or ignores it gives rows without, and "
                   "one warning. A run keeps the setting it started with.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--verbose", "-v", is_flag=True,
              help="Show the engine's own log (vLLM's INFO/WARNING lines, from its start to its close) on the terminal "
                   "instead of writing it to OUT/engine.log.")
def batch(data, out, constrained, both, model, adapter, allow_other_base, engine_arg, prompt_template, schema_name, backend, server, api_key,
          max_concurrency, max_retries, request_timeout, limit, chunk_size, max_model_len, gpu_memory_utilization,
          skip_bad, merged, label_probs, no_progress, verbose) -> None:
    """Run a dataset through vLLM into a run directory (results.jsonl + run.json).

    \b
    --both: the constrained arm into OUT-constrained, then the unconstrained arm into OUT-unconstrained, on one
    engine (each an ordinary run directory; both are checked before the engine starts).
    Offline (default): vLLM in this process, the adapter as a LoRA module.
    --server URL: a running `vllm serve`; --adapter NAME=DIR names the served LoRA module (NAME is the
    model in requests; DIR is hashed for provenance). The structured-outputs backend is the server's.

    \b
    An existing --out is resumed: finished samples are kept and skipped. Before any engine starts, its
    run.json is compared with this invocation on what decides the evaluation (content hashes of base
    model, adapter, dataset and schema; constrained, backend and structured-output options; prompt;
    sampling; engine name, version and mode); any difference is refused, naming each field. A moved
    adapter folder with the same content resumes. One writer at a time: a second `evaluate batch`
    into the same --out exits at once.

    \b
    The terminal shows this tool's lines, a progress bar (samples, tok/s, ETA) and the summary; vLLM's own
    log goes to OUT/engine.log (--verbose: to the terminal). If the engine fails, its log's last lines are
    shown with the error.
    """
    from patent_risk.evaluate.batch import BatchConfig, default_schema, max_lora_rank, run_batch, run_both_arms
    from patent_risk.runtime.engines import VllmOffline, VllmServer

    if both == (constrained is not None):
        raise click.UsageError("give one of --constrained, --unconstrained or --both")
    spec = _adapter(adapter)
    schema_name = default_schema(schema_name, [spec.path] if spec is not None else [])
    cfg = BatchConfig(data=data, out=out, constrained=bool(constrained), model=model, adapter=spec, schema_name=schema_name,
                      backend=backend, server=server, limit=limit, chunk_size=chunk_size, max_model_len=max_model_len,
                      skip_bad=skip_bad, merged=merged, engine_args=_engine_args(engine_arg, server),
                      allow_other_base=allow_other_base, prompt_template=prompt_template, label_probs=label_probs)
    if merged and server:
        raise click.UsageError("--merge is for the offline engine; a server serves what it was started with")
    if server:
        from patent_risk.serve.server import served_backend

        cfg.backend = served_backend(server) or "set at server start (unknown)"

        def make_engine(model_path):
            served = spec.name if spec else model_path
            return VllmServer(server, served, model_path, api_key=api_key, max_concurrency=max_concurrency,
                              max_retries=max_retries, timeout=request_timeout, backend=cfg.backend, log=click.echo)
    elif merged:
        if spec is None:
            raise click.UsageError("--merge needs --adapter NAME=DIR")

        def make_engine(model_path):
            from patent_risk.train.merge import merged_for

            merged_model = merged_for(spec.path, model_path, log=click.echo, allow_other_base=cfg.allow_other_base)
            engine = VllmOffline(str(merged_model), None, backend=backend,
                                 max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                                 max_batch=chunk_size, engine_args=cfg.engine_args)
            engine.description["merged_adapter"] = spec.name
            return engine
    else:
        def make_engine(model_path):
            return VllmOffline(model_path, spec, backend=backend, max_model_len=max_model_len,
                               gpu_memory_utilization=gpu_memory_utilization, max_batch=chunk_size,
                               max_lora_rank=max_lora_rank(cfg), engine_args=cfg.engine_args)
    from patent_risk.runtime.engine_log import ENGINE_LOG

    run = run_both_arms if both else run_batch
    summaries = run(cfg, make_engine, log=click.echo, progress=not no_progress, quiet=not verbose)
    for summary in summaries if both else [summaries]:
        if summary.generated:
            decode_s = max(summary.seconds - summary.compile_s, 1e-9)
            compiled = f", of which {summary.compile_s:.0f} s compiling new schemas" if summary.compile_s >= 0.5 else ""
            click.echo(f"{summary.run_dir}: {summary.generated} samples in {summary.seconds:.0f} s{compiled} "
                       f"({summary.generated / decode_s:.2f} samples/s, {summary.output_tokens / decode_s:.1f} output tok/s"
                       f"{' without the compile' if compiled else ''}); "
                       f"finish reasons {summary.finish_reasons}" + ("" if verbose else f"; engine log {summary.run_dir / ENGINE_LOG}"))


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Dataset JSONL; its first --limit records are used.")
@click.option("--adapter", required=True, metavar="NAME=DIR", help="The LoRA adapter (PEFT in HF, a LoRA module in vLLM, merged for merged*).")
@click.option("--model", default=None, help=MODEL_HELP)
@click.option("--allow-other-base", is_flag=True, help=ALLOW_OTHER_HELP)
@click.option("--engine-arg", "engine_arg", multiple=True, metavar="KEY=VALUE",
              help="vLLM configurations: one of vLLM's engine arguments (see evaluate batch --help). Repeatable.")
@click.option("--prompt-template", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE", help=PROMPT_HELP)
@click.option("--configs", "configs", default=None, metavar="NAME,NAME,...",
              help="Configurations to run, in this order (default: all but the -probs ones): hf, hf-outlines, vllm, "
                   "vllm-outlines, vllm-xgrammar, vllm-guidance, merged, merged-outlines, merged-eager; vllm-probs and "
                   "vllm-outlines-probs read label probabilities (their cost against vllm and vllm-outlines).")
@click.option("--limit", type=int, default=32, show_default=True, help="Samples for every configuration but hf-outlines.")
@click.option("--hf-limit", type=int, default=8, show_default=True,
              help="Samples for hf-outlines (one record at a time, slow); its rates are per sample, so ratios stay fair.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="hf: at most this many records per generate call (left padding); records are grouped by their max_tokens so that each keeps its own budget.")
@click.option("--hf-threads", type=int, default=None,
              help="hf, hf-outlines: torch threads (default: every core). On a busy machine fewer threads than cores "
                   "avoid OpenMP spin-waiting (measured here: 2 threads 10x slower than 1 while other jobs ran).")
@click.option("--schema", "schema_name", default=None, type=click.Choice(SCHEMA_NAMES), help=SCHEMA_HELP)
@click.option("--max-model-len", type=int, default=2048, show_default=True, help="vLLM configurations.")
@click.option("--gpu-memory-utilization", type=float, default=None,
              help="vLLM: share of GPU memory vLLM may take. On the CPU build the default sizes the KV cache for "
                   "--limit full-length sequences (at most half the free memory), as `evaluate batch` does per chunk.")
@click.option("--own-ids", is_flag=True,
              help="Give every record element ids of its own (E1 -> <record id>-E1, in the label too), hence a schema of "
                   "its own: what compiling costs a user whose ids differ from claim to claim (the demo's E1..En give "
                   "a handful of schemas).")
@click.option("--warm-pass/--no-warm-pass", default=True, show_default=True,
              help="vLLM configurations: after the cold pass, generate the same requests again on the same engine with "
                   "every grammar cached (samples/s warm).")
@click.option("--compile-sample", type=int, default=None,
              help="vLLM constrained: time the front-end compile (per schema, cold and warm) on the first N distinct "
                   "schemas only (default: all). With --own-ids every record is a schema of its own, and timing them all "
                   "costs as long as compiling them (about 3 s each on Gemma's vocabulary here).")
@click.option("--out", default="artifacts/bench/latest", show_default=True, type=click.Path(file_okay=False),
              help="Writes bench.json, bench.md, bench.png, outputs/CONFIG.jsonl and workers/ (spec, logs) here.")
def bench(data, adapter, model, allow_other_base, engine_arg, prompt_template, configs, limit, hf_limit, batch_size, hf_threads, schema_name, max_model_len,
          gpu_memory_utilization, own_ids, warm_pass, compile_sample, out) -> None:
    """Throughput of every generation path on the same samples, adapter and max_tokens, in one invocation.

    \b
    Configurations (each in its own worker process, one after another, never concurrently):
      hf               HF transformers generate + PEFT adapter, batched, unconstrained
      hf-outlines      HF + PEFT + outlines JSON-schema logits processor (llguidance), one record at a time
      vllm             vLLM offline, adapter as a LoRA module, unconstrained
      vllm-outlines    the same, constrained (per-record schema), outlines backend
      vllm-xgrammar    ... xgrammar backend
      vllm-guidance    ... guidance (llguidance) backend
      merged           vLLM offline, adapter merged into the base (patent-risk train merge, once, temporary), no LoRA
      merged-outlines  the same, constrained, outlines backend
      merged-eager     merged, unconstrained, torch.compile off (as vLLM's CPU build runs LoRA engines)
      vllm-probs, vllm-outlines-probs   vllm and vllm-outlines reading label probabilities (not in the default)

    \b
    Per configuration: samples, output tokens, load_s (model load + warm-up), gen_s (generation only),
    output tok/s, samples/s, the distinct schemas and (constrained) the compile time per schema cold and
    warm, time to first token, for vLLM a cold pass (nothing compiled, outlines' disk cache empty) and a
    warm pass (every grammar cached), peak RSS of the worker's process tree (sampled every 0.2 s),
    json_valid, finish reasons, a hash of the outputs. Then ratios
    (vllm-outlines over hf-outlines, constrained/unconstrained, adapter/merged) and how many raw
    outputs are identical between vllm and merged (and their constrained pair).

    \b
    Develop with a small run, e.g.:
      evaluate bench --data data/demo/eval.jsonl --adapter demo=artifacts/adapters/demo --limit 4 --hf-limit 2 \\
                     --configs hf,vllm --out artifacts/bench/try
    A full run (default limits, all configurations) takes several minutes on a 2-core CPU; figures taken
    while other processes compete for the CPU are not comparable (see others' CPU/wall in the table).
    """
    from patent_risk.bench.offline import run_bench
    from patent_risk.bench.offline_configs import BenchOptions, parse_configs
    from patent_risk.evaluate.batch import default_schema

    spec = _adapter(adapter)
    schema_name = default_schema(schema_name, [spec.path])
    opts = BenchOptions(data=data, adapter_name=spec.name, adapter_path=spec.path, model=model,
                        configs=parse_configs(configs), limit=limit, hf_limit=hf_limit, batch_size=batch_size, out=out,
                        schema_name=schema_name, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                        hf_threads=hf_threads, own_ids=own_ids, warm_pass=warm_pass, compile_sample=compile_sample,
                        engine_args=_engine_args(engine_arg), allow_other_base=allow_other_base,
                        prompt_template=prompt_template)
    doc = run_bench(opts, log=click.echo)
    click.echo(f"\n{Path(out) / 'bench.md'}\n{Path(out) / 'bench.json'}\n{Path(out) / 'bench.png'}")
    failed = [r["config"] for r in doc["runs"] if r.get("status") != "ok"]
    if failed:
        from patent_risk.schemas.errors import UserError

        raise UserError(f"configuration(s) failed: {', '.join(failed)} (logs under {Path(out) / 'workers'}); "
                        "the others are reported")


@main.command("constraint-cost")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Dataset JSONL; its first --limit records are used.")
@click.option("--adapter", required=True, metavar="NAME=DIR", help="The LoRA adapter, served as a LoRA module.")
@click.option("--model", default=None, help=MODEL_HELP)
@click.option("--allow-other-base", is_flag=True, help=ALLOW_OTHER_HELP)
@click.option("--engine-arg", "engine_arg", multiple=True, metavar="KEY=VALUE",
              help="One of vLLM's engine arguments for every point (see evaluate batch --help), not max_num_seqs "
                   "(--batch-sizes sets it). Repeatable.")
@click.option("--prompt-template", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE", help=PROMPT_HELP)
@click.option("--schema", "schema_name", default=None, type=click.Choice(SCHEMA_NAMES), help=SCHEMA_HELP)
@click.option("--backends", default="outlines,xgrammar,guidance", show_default=True, metavar="NAME,NAME,...",
              help="vLLM structured-outputs backends to measure, in this order.")
@click.option("--batch-sizes", default="1,8,32,147", show_default=True, metavar="N,N,...",
              help="Batch sizes (vLLM's max_num_seqs), one engine each.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Passes per arm at each point (the spread).")
@click.option("--limit", type=int, default=147, show_default=True, help="Records per pass.")
@click.option("--limit-at", "limit_at", multiple=True, default=("1=32",), show_default=True, metavar="BATCH=N",
              help="Fewer records at a batch size (one record at a time is slow). Repeatable.")
@click.option("--max-model-len", type=int, default=1024, show_default=True)
@click.option("--gpu-memory-utilization", type=float, default=None,
              help="vLLM: share of GPU memory vLLM may take (CPU build: the KV cache is sized for the batch).")
@click.option("--label-probs/--no-label-probs", default=False, show_default=True,
              help="Both arms read each decision's label probabilities (a full-vocabulary log-softmax per step in "
                   "both; off by default so that the ratio is the constraint's alone).")
@click.option("--fresh", is_flag=True, help="Measure every point again (by default an interrupted sweep started again "
                                              "with the same settings keeps the points it finished).")
@click.option("--profile", is_flag=True,
              help="After each point's timed passes, one more pass per arm under py-spy (pip install py-spy): the "
                   "functions whose CPU time grows most under the constraint, in sweep.md; raw stacks in profiles/.")
@click.option("--profile-rate", type=int, default=25, show_default=True, help="py-spy samples per second (--profile).")
@click.option("--out", default="artifacts/bench/constraint-cost", show_default=True, type=click.Path(file_okay=False),
              help="Writes sweep.json, sweep.md, sweep.png, points/, outputs/ and workers/ (spec, logs) here.")
def constraint_cost(data, adapter, model, allow_other_base, engine_arg, prompt_template, schema_name, backends, batch_sizes,
                    repeats, limit, limit_at, max_model_len, gpu_memory_utilization, label_probs, fresh, profile, profile_rate,
                    out) -> None:
    """What the JSON-schema constraint costs in throughput, per backend and batch size, both arms alike.

    \b
    For each backend x batch size, in a worker process of its own (one at a time):
      one vLLM engine with max_num_seqs = the batch size and that structured-outputs backend;
      every distinct schema compiled once first (the grammar cache warm, as a second run finds it);
      one unconstrained pass outside the figures (a fresh engine's first pass may pay one-time costs);
      then the records unconstrained and constrained, --repeats times each, the arms alternating
      which goes first, vLLM's prefix cache emptied before every pass.

    \b
    Writes, after every point: sweep.md (the table: both arms' samples/s as median (min-max), the
    ratio of medians, each repeat's paired ratio, whether it reaches 0.9x), sweep.json, sweep.png.
    Reading label probabilities is off (it costs both arms the same full-vocabulary log-softmax);
    --label-probs measures a point with it on.

    \b
    Sized for this project's 2-core CPU: the default grid (3 backends x 4 batch sizes x 3 repeats
    x 2 arms) takes hours there; start with one backend, e.g.
      evaluate constraint-cost --data data/demo/eval.jsonl --adapter demo=artifacts/adapters/demo \\
                               --backends outlines --batch-sizes 1,8 --repeats 2 --limit 16
    """
    from patent_risk.bench.sweep import SweepOptions, parse_backends, parse_int_list, parse_limit_at, run_sweep
    from patent_risk.evaluate.batch import default_schema

    spec = _adapter(adapter)
    opts = SweepOptions(data=data, adapter_name=spec.name, adapter_path=spec.path, model=model,
                        backends=parse_backends(backends), batch_sizes=parse_int_list(batch_sizes, "--batch-sizes"),
                        repeats=repeats, limit=limit, limit_at=parse_limit_at(limit_at),
                        schema_name=default_schema(schema_name, [spec.path]), max_model_len=max_model_len,
                        gpu_memory_utilization=gpu_memory_utilization, label_probs=label_probs,
                        engine_args=_engine_args(engine_arg), allow_other_base=allow_other_base,
                        prompt_template=prompt_template, out=out, fresh=fresh,
                        profile_rate=profile_rate if profile else None)
    doc = run_sweep(opts, log=click.echo)
    click.echo(f"\n{Path(out) / 'sweep.md'}\n{Path(out) / 'sweep.json'}\n{Path(out) / 'sweep.png'}")
    failed = [f"{p['backend']} at batch {p['batch']}" for p in doc["points"] if p.get("status") != "ok"]
    if failed:
        from patent_risk.schemas.errors import UserError

        raise UserError(f"point(s) failed: {', '.join(failed)} (logs under {Path(out) / 'workers'}); the others are reported")


@main.command()
@click.option("--train", "train_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The training split: the majority answer is learnt from it alone.")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="The records to answer (the eval split).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write (must not hold a run).")
@click.option("--schema", "schema_name", default="v1", show_default=True, type=click.Choice(["v1", "v3"]),
              help="Output schema (one without reasons).")
def baseline(train_path, data, out, schema_name) -> None:
    """Write the majority-class baseline as a run directory: the training split's most frequent risk_level and
    element match, answered for every record of --data. `evaluate report` pairs it with a model's run.

    \b
    evaluate baseline --train data/demo/train.jsonl --data data/demo/eval.jsonl --out artifacts/runs/majority
    """
    from patent_risk.evaluate.baseline import write_majority_run

    info = write_majority_run(train_path, data, out, schema_name)
    ans = info["engine"]["answer"]
    click.echo(f"{out}: {info['counts']['samples']} samples answered risk_level {ans['risk_level']}, every element "
               f"{ans['match']} (the majority of {info['engine']['labelled_train_records']} labelled training records)")


@main.command()
@click.argument("adapters", nargs=-1, required=True, metavar="NAME=ADAPTER_DIR...")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The dev split (`patent-risk train dev-split` writes it): never the eval split.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Writes curve.json, curve.md, curve.png and one run directory per point under OUT/runs.")
@click.option("--budget-s", type=float, default=None, help="Choose only among points trained in at most this many seconds.")
@click.option("--base/--no-base", default=True, show_default=True, help="The untrained base model as the point at 0 s.")
@click.option("--every", type=int, default=None, help="Only checkpoints whose step is a multiple of this (the final adapter always).")
@click.option("--final-only", is_flag=True, help="The final adapters only, no checkpoints.")
@click.option("--model", default=None, help="Base model the adapters are decoded on (default: their own base, from "
              "their manifests; one that is not their base nor made from it is refused).")
@click.option("--allow-other-base", is_flag=True, help=ALLOW_OTHER_HELP)
@click.option("--engine-arg", "engine_arg", multiple=True, metavar="KEY=VALUE", help=ENGINE_ARG_HELP)
@click.option("--prompt-template", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
              help="A Jinja template of the user turn for every point, the base's too. Default: the one the adapters were "
                   "trained with (they must agree), else the built-in prompt.")
@click.option("--schema", "schema_name", default=None, type=click.Choice(SCHEMA_NAMES),
              help="Output schema every point is decoded and scored in. Default: the one the adapters were trained to "
                   "write (they must agree), else v1.")
@click.option("--chunk-size", default=160, show_default=True, help="Records decoded together.")
@click.option("--max-model-len", default=1024, show_default=True, help="Context length of the engine.")
@click.option("--backend", default="outlines", show_default=True, help="Structured-outputs backend.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--verbose", "-v", is_flag=True, help="vLLM's own log on the terminal (default: each run's engine.log).")
def curve(adapters, data, out, budget_s, base, every, final_only, model, allow_other_base, engine_arg, prompt_template, schema_name,
          chunk_size, max_model_len, backend, no_progress, verbose) -> None:
    """Learning curves on a dev split: every kept checkpoint of each adapter (ADAPTER_DIR.checkpoints/checkpoint-N)
    and the adapter itself, decoded constrained on --data by one vLLM engine, against training time; then the
    declared choice rule: the highest mean of dev risk and match accuracy within --budget-s (ties: less training).

    \b
    patent-risk train dev-split --config train/configs/demo.yaml -s dev_size=120 --out artifacts/dev.jsonl
    patent-risk train qlora -s dev_size=120 -s save_steps=40 -s save_total_limit=100 -s output_dir=artifacts/sweeps/a
    evaluate curve a=artifacts/sweeps/a --data artifacts/dev.jsonl --out artifacts/curves/demo --budget-s 600
    """
    from patent_risk.evaluate.curve import Checkpoint, check_same_base, checkpoints, evaluate_points, write_curve
    from patent_risk.runtime.engine_args import adapters_lora_rank
    from patent_risk.runtime.engines import VllmOffline

    engine_args = _engine_args(engine_arg)
    points, dirs = [], []
    for spec in map(_adapter, adapters):
        dirs.append(Path(spec.path))
        points += [p for p in checkpoints(spec.name, spec.path, every, log=click.echo) if p.final or not final_only]
    check_same_base(dirs)
    if base:
        points.insert(0, Checkpoint("base", 0, 0.0, None, True))

    rank = adapters_lora_rank(dirs, engine_args)

    def make_engine(model_path, spec):
        return VllmOffline(model_path, spec, backend=backend, max_model_len=max_model_len, max_batch=chunk_size,
                           max_lora_rank=rank, engine_args=engine_args)

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    scored = evaluate_points(points, data, out_dir, make_engine, chunk_size=chunk_size, max_model_len=max_model_len,
                             model=model, log=click.echo, progress=not no_progress, quiet=not verbose,
                             engine_args=engine_args, allow_other_base=allow_other_base,
                             prompt_template=prompt_template, schema_name=schema_name)
    chosen = write_curve(scored, out_dir, data, budget_s)
    click.echo((out_dir / "curve.md").read_text(encoding="utf-8"))
    click.echo(f"{out_dir / 'curve.png'}\n{out_dir / 'curve.json'}")
    if chosen is None:
        raise SystemExit(1)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Writes metrics.json, report.md, report.html here.")
@click.option("--baseline", default=None, help="Reference run name for comparisons (default: the first run).")
@click.option("--by", multiple=True, help="Slice every metric by a field: patent_id or meta.PATH; a numeric field into bins with "
              "meta.PATH:EDGE,EDGE,... (e.g. meta.boundary_distance:0.5,1,2). Repeatable.")
@click.option("--risk-rule", default=None, type=click.Choice(list(RISK_RULES)),
              help="Score risk_consistent: does each valid output's own risk_level equal what its own matches imply "
                   "under this rule? all-elements (the demo data's): every element 대응 -> 높음, any 미대응 -> 낮음, "
                   "else 애매. The model's risk is always scored as it wrote it.")
@click.option("--pairs", default="reference", show_default=True, type=click.Choice(["reference", "within-arm", "all"]),
              help="Which runs are compared (McNemar, paired bootstrap): each against the reference run; every pair "
                   "of runs of the same arm (constrained with constrained, unconstrained with unconstrained); or every pair.")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
              help="A decision rule `evaluate calibrate` fitted on a dev run: applied to each run (refused for a run that "
                   "holds any of the dev records).")
def report(run_dirs, out, baseline, by, risk_rule, pairs, calibration) -> None:
    """Score runs and compare them side by side (docs/formats.md section 4).

    \b
    evaluate report artifacts/runs/demo-constrained artifacts/runs/demo-unconstrained --out artifacts/reports/demo
    evaluate report RUN_V1 RUN_V2 RUN_V3 ... --risk-rule all-elements --pairs within-arm --out DIR   # schemas
    """
    from patent_risk.evaluate.report import write_report

    rep = write_report([Path(d) for d in run_dirs], Path(out), baseline=baseline, by=list(by), risk_rule=risk_rule,
                       pairs=pairs, calibration=calibration)
    for w in getattr(rep, "warnings", []) or []:
        click.echo(f"warning: {w}", err=True)
    click.echo(rep.summary_markdown)
    click.echo(f"\nreport: {Path(out) / 'report.html'}\nmarkdown: {Path(out) / 'report.md'}\nmetrics: {Path(out) / 'metrics.json'}")



@main.command()
@click.argument("dev_run", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The calibration file to write (JSON).")
@click.option("--accuracy", default=0.95, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Keep the decisions whose confidence reaches a threshold chosen for at least this accuracy.")
@click.option("--ambiguous-recall", default=0.9, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Choose the P(애매) threshold that reaches this recall of gold 애매.")
def calibrate(dev_run, out, accuracy, ambiguous_recall) -> None:
    """Fit a decision rule on a DEV run (label probabilities in its rows, gold in its records): temperature
    scaling per field, a confidence threshold at --accuracy, and a P(애매) threshold at --ambiguous-recall.

    \b
    evaluate batch --constrained --adapter mine=DIR --data dev.jsonl --out runs/dev
    evaluate calibrate runs/dev --out calibration.json
    evaluate report runs/eval --calibration calibration.json --out reports/eval
    """
    from patent_risk.evaluate import calibrate as cal
    from patent_risk.evaluate.rundir import read_run

    run = read_run(Path(dev_run))
    doc = cal.fit(run.rows, accuracy=accuracy, ambiguous_recall=ambiguous_recall)
    doc["dev_run"] = str(dev_run)
    cal.write(doc, out)
    for field, f in doc["fields"].items():
        keep = f.get("keep") or {}
        click.echo(f"{field}: {f['decisions']} dev decisions, temperature {f['temperature']}, keep "
                   f"{keep.get('coverage', 0):.1%} at confidence >= {keep.get('threshold')} for {accuracy:.0%} accuracy")
    amb = doc["fields"].get("risk_level", {}).get("ambiguous") or {}
    if amb:
        click.echo(f"애매: threshold {amb.get('threshold')} ({amb.get('why') or 'recall ' + format(amb.get('recall', 0), '.1%')})")
    click.echo(out)


if __name__ == "__main__":
    main()
