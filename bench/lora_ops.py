"""Benchmark vLLM's stock CPU LoRA ops against runtime/cpu_lora.py's grouped ones.

    patent-risk bench lora-ops                  # stock, exact, matmul: 32 x 120 tokens
    patent-risk bench lora-ops --modes stock,exact
    patent-risk bench lora-ops --profile        # + torch.profiler of the fast runs
    patent-risk bench lora-ops --plugin-check   # + the plugin path, multiprocess

Each mode runs in its own subprocess (its own engine, in-process:
``VLLM_ENABLE_V1_MULTIPROCESSING=0``), greedy, ``ignore_eos=True``; the parent
compares every mode's token ids with stock's and prints output tok/s; it exits
1 when ``exact`` (which promises bitwise-equal results) differs from stock.  ``exact`` and ``matmul`` are runtime.cpu_lora's two modes
(``PATENT_RISK_LORA_OPS_MODE``).  The ``vllm.general_plugins`` entry point of
this package installs the fast ops in every vLLM process, so the stock run
sets ``PATENT_RISK_STOCK_LORA_OPS=1``.  ``--plugin-check`` starts one more
engine with multiprocessing ON and without calling install() itself, and asks
the worker whether its ops are the fast ones.  ``--reuse`` keeps the results
of modes already in ``--workdir`` (same adapter, prompts and lengths).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import click

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "artifacts" / "models" / "SmolLM2-135M-Instruct"

THREAD_ENV = {
    "VLLM_CPU_OMP_THREADS_BIND": "0-1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
}

_SUBJECTS = [
    "접이식 스마트폰 힌지",
    "무선 이어폰 충전 케이스",
    "전기차 배터리 냉각판",
    "로봇 청소기 흡입구",
    "반도체 웨이퍼 세정 장치",
    "의료용 주사기 안전 캡",
    "태양광 패널 고정 브래킷",
    "커피 캡슐 추출 노즐",
]


def make_prompts(n: int) -> list[str]:
    prompts = []
    for i in range(n):
        subject = _SUBJECTS[i % len(_SUBJECTS)]
        prompts.append(
            f"청구항 {i + 1}: {subject}에 관한 발명으로, 제1 부재와 제2 부재가 "
            f"결합되어 {i % 5 + 2}개의 구성요소를 포함한다. 제품 설명과 비교하여 "
            "각 구성요소의 침해 위험을 평가하세요."
        )
    return prompts


def make_adapter(model_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """A random LoRA (r=16, alpha=32, q/k/v/o) whose B has std 0.3."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(mean=0.0, std=0.3)
    model.save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------
# child: one engine, one mode
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------


def _spawn(args, mode: str, adapter: Path, out: Path, extra: list[str], env_extra: dict):
    env = dict(os.environ)
    env.update(THREAD_ENV)
    env.update(env_extra)
    if mode == "stock":
        env["PATENT_RISK_STOCK_LORA_OPS"] = "1"
    else:
        env.pop("PATENT_RISK_STOCK_LORA_OPS", None)
        env["PATENT_RISK_LORA_OPS_MODE"] = mode
    cmd = [
        sys.executable,
        "-m", "patent_risk.bench.lora_ops",
        "--child",
        "--mode",
        mode,
        "--model",
        str(args.model),
        "--adapter",
        str(adapter),
        "--prompts",
        str(args.prompts),
        "--max-tokens",
        str(args.max_tokens),
        "--out",
        str(out),
        *extra,
    ]
    print(f"[bench] running {mode} {' '.join(extra)}...", flush=True)
    log = out.with_suffix(".log")
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.stderr.write(log.read_text()[-6000:])
        raise SystemExit(f"{mode} run failed (rc={proc.returncode}); log: {log}")
    return json.loads(out.read_text()), log


def run_parent(args) -> int:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lora_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    adapter = Path(args.adapter) if args.adapter else None
    if adapter is None:
        adapter = workdir / "adapter"
        if not (adapter / "adapter_config.json").exists():
            print(f"[bench] writing random adapter to {adapter}", flush=True)
            make_adapter(Path(args.model), adapter)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "stock" not in modes:
        modes.insert(0, "stock")
    base_env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    results = {}
    for mode in modes:
        out = workdir / f"{mode}.json"
        if args.reuse and out.exists():
            prev = json.loads(out.read_text())
            if (
                len(prev["token_ids"]) == args.prompts
                and all(len(t) == args.max_tokens for t in prev["token_ids"])
                and not (args.profile and mode != "stock" and "profile" not in prev)
            ):
                print(f"[bench] reusing {out}", flush=True)
                results[mode] = prev
                continue
        extra = []
        if args.profile and mode != "stock":
            extra = ["--profile", "--profile-tokens", str(args.profile_tokens)]
        results[mode], _ = _spawn(args, mode, adapter, out, extra, base_env)

    stock = results["stock"]
    print()
    print(f"prompts x new tokens : {args.prompts} x {args.max_tokens}")
    print(f"prompt tokens        : {stock['prompt_tokens']}")
    exact_identical = True  # the exit status: only ``exact`` promises identical ids
    for mode, r in results.items():
        same = sum(a == b for a, b in zip(stock["token_ids"], r["token_ids"]))
        identical = r["token_ids"] == stock["token_ids"]
        if mode == "exact":
            exact_identical = identical
        first_diff = ""
        if not identical:
            for i, (a, b) in enumerate(zip(stock["token_ids"], r["token_ids"])):
                if a != b:
                    k = next(j for j in range(min(len(a), len(b))) if a[j] != b[j])
                    first_diff = f"; first difference: prompt {i}, token {k}"
                    break
        print(
            f"{mode:>6}: {r['output_tok_s']:7.1f} output tok/s "
            f"({r['output_tokens']} tokens in {r['elapsed_s']:.1f} s; "
            f"x{r['output_tok_s'] / stock['output_tok_s']:.2f} vs stock; "
            f"same token ids as stock: {same}/{len(stock['token_ids'])}{first_diff})"
        )
        if "cpu_per_wall" in r:
            print(
                f"        cpu/wall {r['cpu_per_wall']:.2f}, other processes' cpu/wall "
                f"{r.get('others_cpu_per_wall', float('nan')):.2f}, 1-min load "
                f"{r['loadavg_1m'][0]:.2f} -> {r['loadavg_1m'][1]:.2f}"
            )
    print(f"sample output        : {stock['sample_text'][:80]!r}")

    if args.profile:
        for mode, r in results.items():
            prof = r.get("profile")
            if not prof:
                continue
            print(
                f"\nprofile, {mode} ({prof['output_tokens']} output tokens, "
                f"{prof['wall_s']:.1f} s under the profiler; "
                f"op table in {workdir / (mode + '.log')}):"
            )
            for row in prof["labelled"]:
                print(
                    f"  {row['name']:<44} calls={row['calls']:>6} "
                    f"total={row['cpu_total_ms']:9.1f} ms"
                )

    if args.plugin_check:
        mode = "exact"
        check, _ = _spawn(args, mode, adapter, workdir / "plugin.json", ["--plugin-check"], {})
        print(
            f"\nplugin check (multiprocess, no explicit install): front end pid "
            f"{check['pid']} installed={check['frontend_installed']}, "
            f"workers={check['workers']}"
        )
        ok = all(w["installed"] for w in check["workers"]) and all(
            w["pid"] != check["pid"] for w in check["workers"]
        )
        print(f"plugin installed the fast ops in the worker process: {ok}")
        if not ok:
            return 1

    (workdir / "summary.json").write_text(
        json.dumps(
            {
                mode: {
                    "output_tok_s": r["output_tok_s"],
                    "identical_to_stock": r["token_ids"] == stock["token_ids"],
                }
                for mode, r in results.items()
            },
            indent=1,
        )
    )
    return 0 if exact_identical else 1


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default=str(DEFAULT_MODEL), show_default=True, help="Base model folder.")
@click.option("--adapter", default=None, help="An existing PEFT adapter folder (default: a random one made for the run).")
@click.option("--workdir", default=None, help="Where results go (default: a temporary folder).")
@click.option("--prompts", type=int, default=32, show_default=True)
@click.option("--max-tokens", type=int, default=120, show_default=True)
@click.option("--profile", is_flag=True, help="torch.profiler of the fast runs as well.")
@click.option("--profile-tokens", type=int, default=24, show_default=True)
@click.option("--profile-rows", type=int, default=30, show_default=True)
@click.option("--plugin-check", is_flag=True, help="The plugin path too, multiprocess.")
@click.option("--modes", default="stock,exact,matmul", show_default=True)
@click.option("--reuse", is_flag=True, help="Reuse results already in --workdir.")
@click.option("--child", is_flag=True, hidden=True)
@click.option("--mode", type=click.Choice(["stock", "exact", "matmul"]), default="exact", hidden=True)
@click.option("--out", default=None, hidden=True)
def main(**options) -> None:
    """Benchmark vLLM's stock CPU LoRA ops against runtime/cpu_lora.py's grouped ones (see the module's text)."""
    args = SimpleNamespace(**options)
    if args.child:
        from .lora_ops_child import run_child  # it imports this module's helpers: imported here, not at the top

        run_child(args)
        return
    sys.exit(run_parent(args))


if __name__ == "__main__":
    main()
