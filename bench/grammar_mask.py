"""Microbenchmark of applying a structured-outputs bitmask to CPU logits (issue 34): xgrammar's CPU kernel against
runtime/cpu_grammar.py's word-at-a-time path, alone and with the rows that allow most words handed to xgrammar.

    patent-risk bench grammar-mask --rows 8,32,147 --vocab 262144 --repeats 20

Masks are synthetic, of the kinds a JSON-schema grammar makes: ``structure`` rows ban almost every 32-token word
(a position between JSON tokens or in an enum label), ``string`` rows allow almost every word (inside a free-text
string: 97% of words allowed, 1% banned, 2% mixed), ``half`` is one of each alternately. Times include a copy of the
logits (the same in every column). Prints a Markdown table; nothing is written.
"""
from __future__ import annotations

import time
from statistics import median

import click

KINDS = ("structure", "string", "half")


def make_mask(rows: int, words: int, kind: str, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    bm = torch.randint(-2**31, 2**31 - 1, (rows, words), generator=g, dtype=torch.int64).to(torch.int32)
    r = torch.rand(rows, words, generator=g)
    for i in range(rows):
        row_kind = kind if kind != "half" else ("structure" if i % 2 == 0 else "string")
        if row_kind == "structure":
            bm[i][r[i] < 0.999] = 0
        else:
            bm[i][r[i] < 0.97] = -1
            bm[i][(r[i] >= 0.97) & (r[i] < 0.98)] = 0
    return bm


def time_ms(fn, logits, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        work = logits.clone()
        t0 = time.perf_counter()
        fn(work)
        out.append((time.perf_counter() - t0) * 1000)
    return median(out)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rows", default="8,32,147", show_default=True, help="Batch sizes (rows of logits).")
@click.option("--vocab", default=262_144, show_default=True, help="Vocabulary size (Gemma 3: 262,144).")
@click.option("--repeats", default=20, show_default=True, help="Calls per cell; the median is shown.")
def main(rows: str, vocab: int, repeats: int) -> None:
    """ms per call (median) of each way to apply the bitmask, per batch size and kind of mask."""
    import torch
    from xgrammar.kernels.apply_token_bitmask_inplace_cpu import apply_token_bitmask_inplace_cpu as stock

    from patent_risk.runtime.cpu_grammar import apply_bitmask_cpu

    print("| rows | mask | xgrammar | word at a time | word at a time, mostly-allowed rows to xgrammar |")
    print("|---:|---|---:|---:|---:|")
    for n in (int(x) for x in rows.split(",")):
        logits = torch.randn(n, vocab)
        for kind in KINDS:
            bm = make_mask(n, vocab // 32, kind)
            cells = []
            for fn in (lambda x: stock(x, bm),
                       lambda x: apply_bitmask_cpu(x, bm) or stock(x, bm),
                       lambda x: apply_bitmask_cpu(x, bm, mostly_allowed=lambda r: stock(x, bm, indices=r)) or stock(x, bm)):
                cells.append(f"{time_ms(fn, logits, repeats):.1f}")
            print(f"| {n} | {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
