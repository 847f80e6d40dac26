"""One measured run of `patent-risk bench lora-ops`, in its own process (`--child`): an offline vLLM engine with the
LoRA ops of one mode (stock, exact, matmul), a warm-up, the timed generation with contention indicators, and
optionally torch.profiler's table of the fast ops.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .lora_ops import THREAD_ENV, make_prompts


def _worker_has_fast_ops(worker) -> dict:
    """Runs inside the engine's worker (collective_rpc)."""
    import os as _os

    from patent_risk.runtime import cpu_lora as _cpu_lora

    return {"pid": _os.getpid(), "installed": _cpu_lora.is_installed()}


def _profile_run(llm, prompts, sampling, lora, top: int) -> dict:
    """torch.profiler over a generate call.

    Labels: ``STEP[...]`` one engine step (``execute_model``), ``LORA::...`` the
    punica wrapper's entry points, ``LORAOP::...`` the ops; ``[decode]`` when
    the step/call has at most one token per prompt, else ``[prefill]`` (prefill
    chunks, possibly with some decodes mixed in).
    """
    import importlib

    from torch.profiler import ProfilerActivity, profile, record_function
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    from patent_risk.runtime import cpu_lora

    n_prompts = len(prompts)

    def phase(num_tokens: int) -> str:
        return "decode" if num_tokens <= n_prompts else "prefill"

    def labelled(fn, label, tokens_of):
        def wrapper(*args, **kwargs):
            try:
                tag = f"{label}[{phase(tokens_of(args, kwargs))}]"
            except Exception:
                tag = label
            with record_function(tag):
                return fn(*args, **kwargs)

        return wrapper

    restore = []

    def patch(owner, name, label, tokens_of):
        fn = getattr(owner, name)
        restore.append((owner, name, owner.__dict__.get(name, None), fn))
        setattr(owner, name, labelled(fn, label, tokens_of))

    patch(
        CPUModelRunner,
        "execute_model",
        "STEP",
        lambda a, k: (a[1] if len(a) > 1 else k["scheduler_output"]).total_num_scheduled_tokens,
    )
    for meth in ("add_lora_linear", "add_lora_logits", "add_lora_embedding"):
        # (self, y, x, ...): tokens = rows of x
        patch(PunicaWrapperCPU, meth, f"LORA::{meth}", lambda a, k: a[2].reshape(-1, a[2].shape[-1]).shape[0])
    for mod_name in cpu_lora._TARGET_MODULES:
        mod = importlib.import_module(mod_name)
        for name in cpu_lora.REPLACED_OPS:
            patch(mod, name, f"LORAOP::{name}", lambda a, k: a[0].shape[0])
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            with record_function("BENCH::generate"):
                t0 = time.perf_counter()
                llm.generate(prompts, sampling, lora_request=lora, use_tqdm=False)
                wall = time.perf_counter() - t0
    finally:
        for owner, name, own_attr, fn in reversed(restore):
            if own_attr is None and owner is CPUModelRunner:
                delattr(owner, name)  # was inherited
            else:
                setattr(owner, name, fn)

    events = prof.key_averages()
    rows = []
    for ev in events:
        rows.append(
            {
                "name": ev.key,
                "calls": ev.count,
                "cpu_total_ms": ev.cpu_time_total / 1000.0,
                "self_cpu_ms": ev.self_cpu_time_total / 1000.0,
            }
        )
    labelled_rows = sorted(
        (r for r in rows if r["name"].startswith(("LORA", "BENCH", "STEP"))),
        key=lambda r: (r["name"].split("[")[-1], -r["cpu_total_ms"]),
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=top), flush=True)
    return {"wall_s": wall, "labelled": labelled_rows}


def run_child(args) -> None:
    for key, value in THREAD_ENV.items():
        os.environ.setdefault(key, value)
    if args.plugin_check:
        # callables sent to workers by collective_rpc need this (both ends)
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    else:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    from patent_risk.runtime import cpu_lora

    if args.mode != "stock" and not args.plugin_check:
        # In-process engine: installing here suffices (the plugin does it too).
        cpu_lora.install(mode=args.mode)

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    t0 = time.perf_counter()
    llm = LLM(
        model=str(args.model),
        enable_lora=True,
        max_lora_rank=16,
        max_loras=1,
        dtype="float32",
        max_model_len=1024,
        gpu_memory_utilization=0.3,
        seed=0,
    )
    build_s = time.perf_counter() - t0
    lora = LoRARequest("bench", 1, str(args.adapter))
    result: dict = {"mode": args.mode, "pid": os.getpid(), "engine_build_s": build_s}

    if args.plugin_check:
        result["workers"] = llm.collective_rpc(_worker_has_fast_ops)
        result["frontend_installed"] = cpu_lora.is_installed()
        out = llm.generate(
            make_prompts(2),
            SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
            lora_request=lora,
            use_tqdm=False,
        )
        result["token_ids"] = [list(o.outputs[0].token_ids) for o in out]
        Path(args.out).write_text(json.dumps(result))
        return

    result["installed"] = cpu_lora.is_installed()
    result["ops_mode"] = cpu_lora.get_mode() if result["installed"] else "stock"
    if (args.mode != "stock") != result["installed"] or (
        result["installed"] and result["ops_mode"] != args.mode
    ):
        raise SystemExit(f"mode {args.mode} but fast ops installed={result['installed']}")

    prompts = make_prompts(args.prompts)
    sampling = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    # warm-up (first LoRA load, first prefill)
    llm.generate(
        prompts[:2],
        SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True),
        lora_request=lora,
        use_tqdm=False,
    )
    load_before = os.getloadavg()[0]
    from patent_risk.runtime.procs import machine_busy_seconds

    busy0 = machine_busy_seconds()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, sampling, lora_request=lora, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    # contamination indicators: this process's CPU use per wall second, the
    # CPU that OTHER processes used meanwhile (cores; ~0 on a quiet machine),
    # and the 1-minute load average around the run
    own = time.process_time() - cpu0
    result["cpu_per_wall"] = own / elapsed
    result["others_cpu_per_wall"] = max(0.0, (machine_busy_seconds() - busy0 - own) / elapsed)
    result["loadavg_1m"] = [load_before, os.getloadavg()[0]]
    token_ids = [list(o.outputs[0].token_ids) for o in outputs]
    n_out = sum(len(t) for t in token_ids)
    result.update(
        {
            "elapsed_s": elapsed,
            "output_tokens": n_out,
            "output_tok_s": n_out / elapsed,
            "prompt_tokens": sum(len(o.prompt_token_ids) for o in outputs),
            "token_ids": token_ids,
            "sample_text": outputs[0].outputs[0].text[:200],
        }
    )
    if args.profile:
        n = max(1, args.profile_tokens)
        result["profile"] = _profile_run(
            llm,
            prompts,
            SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True),
            lora,
            args.profile_rows,
        )
        result["profile"]["output_tokens"] = n * len(prompts)
    Path(args.out).write_text(json.dumps(result))
