"""Learning curves on a dev split, and the declared rule that picks a recipe from them (issue 16).

A recipe (records, steps, learning rate, LoRA targets) is chosen by its accuracy on a dev split carved
from the training file (train config ``dev_size``), never on the eval split. ``patent-risk train qlora`` keeps a
checkpoint every ``save_steps``; each checkpoint and the final adapter is a point of the curve: its
training time so far (the trainer's ``elapsed_s``) and its constrained accuracy on the dev split, decoded by
one vLLM engine for all points (each adapter a LoRA request of its own). The untrained base model is the
curve's point at 0 s.

The choice rule, fixed before any point is seen: the highest mean of risk accuracy and element-match
accuracy on the dev split, among the points trained within the budget; ties go to the shorter training.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from patent_risk.runtime.artifacts import atomic_write_text
from patent_risk.runtime.engine_death import EngineDied
from patent_risk.runtime.engines import AdapterSpec, Engine
from patent_risk.schemas.errors import UserError
from patent_risk.schemas.labels import RISK_LEVELS

from .batch import BatchConfig, Borrowed, run_batch

CURVE_JSON, CURVE_MD, CURVE_PNG = "curve.json", "curve.md", "curve.png"
AMBIGUOUS = RISK_LEVELS[1]  # 애매: the seed's hardest class
RULE = ("highest mean of dev risk accuracy and dev element-match accuracy among the points trained within the "
        "budget; ties: the shorter training")


@dataclass(frozen=True)
class Checkpoint:
    variant: str
    step: int
    train_s: float | None  # training time up to this step (evaluations of the eval-loss slice included)
    adapter: Path | None  # None: the untrained base model
    final: bool


@dataclass
class Point:
    variant: str
    step: int
    train_s: float | None
    adapter: str | None
    run_dir: str
    n: int
    json_valid: float | None
    risk_accuracy: float | None
    match_accuracy: float | None
    ambiguous_recall: float | None
    risk_predicted: dict[str, int]
    majority_risk_accuracy: float | None  # the best constant answer on the dev split itself: a reference line
    majority_match_accuracy: float | None

    @property
    def score(self) -> float | None:
        if self.risk_accuracy is None or self.match_accuracy is None:
            return None
        return (self.risk_accuracy + self.match_accuracy) / 2


def checkpoints(variant: str, adapter_dir: str | Path, every: int | None = None,
                log: Callable[[str], None] = print) -> list[Checkpoint]:
    """The points of one training run: each kept checkpoint (ADAPTER.checkpoints/checkpoint-N) before the last
    step (only steps that are multiples of ``every`` when given), then the final adapter. Training time comes
    from the trainer's log (``elapsed_s``), the final one from the manifest."""
    from patent_risk.runtime.adapters import read_manifest

    adapter_dir = Path(adapter_dir)
    manifest = read_manifest(adapter_dir)
    if manifest is None:
        raise UserError(f"{adapter_dir}: no manifest.json (not an adapter written by `patent-risk train qlora`)")
    results = manifest.get("results") or {}
    final_step = int(results.get("steps") or 0)
    found, estimated = [], []
    for path in adapter_dir.with_name(adapter_dir.name + ".checkpoints").glob("checkpoint-*"):
        suffix = path.name.rpartition("-")[2]
        if not suffix.isdigit() or not (path / "adapter_model.safetensors").exists():
            continue
        step = int(suffix)
        if step >= final_step or (every and step % every):
            continue
        state_path = path / "trainer_state.json"
        history = json.loads(state_path.read_text(encoding="utf-8")).get("log_history", []) if state_path.exists() else []
        elapsed = [h["elapsed_s"] for h in history if "elapsed_s" in h and h.get("step", 0) <= step]
        if elapsed:
            train_s = max(elapsed)
        elif results.get("seconds") and final_step:  # an adapter trained before elapsed_s was logged
            train_s = round(results["seconds"] * step / final_step, 1)
            estimated.append(step)
        else:
            train_s = None
        found.append(Checkpoint(variant, step, train_s, path, False))
    if estimated:
        log(f"{variant}: no elapsed time in the checkpoints' log ({adapter_dir} predates it); the training time of "
              f"steps {', '.join(map(str, sorted(estimated)))} is the manifest's {results['seconds']:.0f} s pro rata")
    found.sort(key=lambda c: c.step)
    return found + [Checkpoint(variant, final_step, results.get("seconds"), adapter_dir, True)]


def check_same_base(adapter_dirs: Sequence[Path]) -> None:
    """A curve compares recipes on one base model: the adapters' manifests must name the same one (by hash)."""
    from patent_risk.runtime.adapters import read_manifest

    bases = {}
    for d in adapter_dirs:
        base = (read_manifest(d) or {}).get("base_model") or {}
        bases[str(d)] = (base.get("sha256"), base.get("name"))
    if len({sha for sha, _ in bases.values()}) > 1:
        listing = "; ".join(f"{d}: {name} ({(sha or '?')[:12]})" for d, (sha, name) in bases.items())
        raise UserError(f"the adapters were trained on different base models ({listing}): a curve compares recipes on one")


def score_run(run_dir: Path) -> dict[str, Any]:
    """Dev metrics of one run directory, through the report's own scoring."""
    from .report import build_report

    m = build_report([run_dir], bootstrap=0).metrics["runs"]
    (entry,) = m.values()
    majority = entry.get("majority_baseline") or {}
    return {
        "n": entry["n"],
        "json_valid": entry["json_valid"]["rate"],
        "risk_accuracy": entry["risk_accuracy"]["rate"],
        "match_accuracy": entry["match_accuracy"]["rate"],
        "ambiguous_recall": entry["risk_per_class"][AMBIGUOUS]["recall"],
        "risk_predicted": {lab: entry["risk_per_class"][lab]["predicted"] for lab in RISK_LEVELS},
        "majority_risk_accuracy": (majority.get("risk") or {}).get("rate"),
        "majority_match_accuracy": (majority.get("match") or {}).get("rate"),
    }


def evaluate_points(points: Sequence[Checkpoint], data: str, out: Path,
                    make_engine: Callable[[str, AdapterSpec], Engine], *, chunk_size: int, max_model_len: int,
                    model: str | None = None, log: Callable[[str], None] = print, progress: bool = True, quiet: bool = True,
                    engine_args: dict[str, Any] | None = None, allow_other_base: bool = False,
                    prompt_template: str | None = None, schema_name: str | None = None) -> list[Point]:
    """Each checkpoint decoded constrained on ``data`` into OUT/runs/VARIANT-stepN (an ordinary run directory:
    resumed, and skipped when finished), all on one engine started with the first adapter, on ``model`` (default:
    the adapters' recorded base; one that is not every adapter's base is refused first: runtime.bases), every
    point (the untrained base too) with one prompt: ``prompt_template``'s, else the one the adapters were
    trained with (they must agree); in ``schema_name``, else the schema the adapters were trained to write (they
    must agree, too)."""
    from patent_risk.runtime.bases import settle_model
    from patent_risk.schemas.prompt import load_prompt_template

    from .batch import adapter_prompt, default_schema

    adapters = [p.adapter for p in points if p.adapter is not None]
    if not adapters:
        raise UserError("no adapter to evaluate: a curve needs at least one trained adapter")
    model = settle_model(model, list(adapters), allow_other_base=allow_other_base, log=log)
    finals = list(dict.fromkeys(p.adapter for p in points if p.adapter is not None and p.final)) or adapters[:1]
    schema_name = default_schema(schema_name, finals)
    if prompt_template:
        prompt = load_prompt_template(prompt_template)
    else:
        by_hash = {}
        for d in finals:
            found = adapter_prompt(d, log)
            by_hash.setdefault(found.fingerprint(schema_name), (found, []))[1].append(str(d))
        if len(by_hash) > 1:
            listing = "; ".join(f"{', '.join(ds)}: {pr.source or 'built-in ' + pr.version}" for pr, ds in by_hash.values())
            raise UserError(f"the adapters were trained with different prompts ({listing}): a curve compares recipes on "
                            "one prompt; give it with --prompt-template FILE")
        (prompt, _), = by_hash.values()
    engine: Any = None
    started_in: Path | None = None  # the run whose engine.log holds the engine's own log
    last_run: Path | None = None  # the run the engine served last (its prefix cache is emptied for the next)
    scored: list[Point] = []
    try:
        for i, cp in enumerate(points, 1):
            spec = None if cp.adapter is None else AdapterSpec(f"{cp.variant}-{cp.step}", str(cp.adapter))
            run_dir = out / "runs" / (f"{cp.variant}-step{cp.step:05d}" if spec else "base")
            log(f"[{i}/{len(points)}] {cp.variant if spec else 'untrained base'}, step {cp.step}: {run_dir}")

            def make(model_path: str, spec=spec, run_dir=run_dir) -> Engine:
                nonlocal engine, started_in, last_run
                if engine is None:
                    engine = make_engine(model_path, AdapterSpec(f"{points[0].variant}-first", str(adapters[0])))
                    started_in = run_dir
                engine.use_adapter(spec)
                lent = Borrowed(engine, shared_with=None if last_run is None else str(last_run))
                last_run = run_dir
                return lent

            cfg = BatchConfig(data=data, out=str(run_dir), constrained=True, model=model, adapter=spec, schema_name=schema_name,
                              chunk_size=chunk_size, max_model_len=max_model_len, engine_args=dict(engine_args or {}),
                              allow_other_base=allow_other_base, base_settled=True, prompt=prompt)
            try:
                run_batch(cfg, make, log=log, progress=progress, quiet=quiet)
            except EngineDied as e:
                raise EngineDied(f"{e}. The curve stopped at point {i} of {len(points)} ({run_dir.name}); the {len(scored)} "
                                 f"finished point(s) are kept under {out / 'runs'}, and re-running the same command skips "
                                 "them") from None
            m = score_run(run_dir)
            scored.append(Point(cp.variant, cp.step, cp.train_s, None if cp.adapter is None else str(cp.adapter),
                                str(run_dir), **m))
            log(f"    risk {_pct(m['risk_accuracy'])}, match {_pct(m['match_accuracy'])}, "
                f"{AMBIGUOUS} recall {_pct(m['ambiguous_recall'])}")
    finally:
        if engine is not None:
            from patent_risk.runtime.engine_log import ENGINE_LOG, engine_output

            with engine_output(started_in / ENGINE_LOG if quiet and started_in is not None else None):
                engine.close()
    return scored


def choose(points: Sequence[Point], budget_s: float | None = None) -> Point | None:
    """The declared rule (RULE): trained points only, within ``budget_s`` of training time when given."""
    eligible = [p for p in points if p.adapter is not None and p.score is not None
                and (budget_s is None or (p.train_s is not None and p.train_s <= budget_s))]
    if not eligible:
        return None
    return max(eligible, key=lambda p: (round(p.score, 6), -(p.train_s or 0.0)))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def curve_markdown(points: Sequence[Point], chosen: Point | None, data: str, budget_s: float | None) -> str:
    from .report_doc import Table, markdown_table

    rows = [[p.variant if p.adapter else "untrained base", str(p.step),
             "-" if p.train_s is None else f"{p.train_s:.0f}", _pct(p.json_valid), _pct(p.risk_accuracy),
             _pct(p.match_accuracy), _pct(p.ambiguous_recall),
             " / ".join(str(p.risk_predicted.get(lab, 0)) for lab in RISK_LEVELS),
             "**chosen**" if p is chosen else ""] for p in points]
    table = Table(["recipe", "step", "train s", "json valid", "risk acc", "match acc", f"{AMBIGUOUS} recall",
                   "predicted " + "/".join(RISK_LEVELS), ""], rows)
    ref = points[0] if points else None
    lines = [f"# Learning curve on {data}", "",
             f"{ref.n if ref else 0} dev samples, constrained decoding. Choice rule: {RULE}"
             + (f" (budget {budget_s:.0f} s)" if budget_s is not None else "") + ".", "",
             markdown_table(table), ""]
    if ref and ref.majority_risk_accuracy is not None:
        lines += [f"Best constant answer on these dev samples: risk {_pct(ref.majority_risk_accuracy)}, "
                  f"match {_pct(ref.majority_match_accuracy)}.", ""]
    lines.append(f"Chosen: {chosen.variant}, step {chosen.step} ({chosen.train_s:.0f} s of training)." if chosen
                 else "Chosen: none (no trained point within the budget).")
    return "\n".join(lines) + "\n"


def plot_curve(points: Sequence[Point], path: Path, budget_s: float | None = None) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    base = next((p for p in points if p.adapter is None), None)
    variants = list(dict.fromkeys(p.variant for p in points if p.adapter is not None))
    for ax, key, title, ref_key in ((axes[0], "risk_accuracy", "risk_level accuracy (dev)", "majority_risk_accuracy"),
                                    (axes[1], "match_accuracy", "element match accuracy (dev)", "majority_match_accuracy")):
        for v in variants:
            pts = [p for p in points if p.variant == v and p.adapter is not None and p.train_s is not None]
            if base is not None:
                pts = [base] + pts
            ax.plot([(p.train_s or 0.0) / 60 for p in pts], [100 * (getattr(p, key) or 0.0) for p in pts],
                    marker="o", label=v)
        ref = getattr(points[0], ref_key) if points else None
        if ref is not None:
            ax.axhline(100 * ref, color="grey", linestyle=":", label="best constant answer")
        if budget_s is not None:
            ax.axvline(budget_s / 60, color="red", linestyle="--", linewidth=0.8, label="budget")
        ax.set_title(title)
        ax.set_xlabel("training time (min)")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_curve(points: Sequence[Point], out: Path, data: str, budget_s: float | None) -> Point | None:
    chosen = choose(points, budget_s)
    doc = {"data": data, "rule": RULE, "budget_s": budget_s, "points": [asdict(p) for p in points],
           "chosen": None if chosen is None else asdict(chosen)}
    atomic_write_text(out / CURVE_JSON, json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
    atomic_write_text(out / CURVE_MD, curve_markdown(points, chosen, data, budget_s))
    plot_curve(points, out / CURVE_PNG, budget_s)
    return chosen
