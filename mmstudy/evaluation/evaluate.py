"""Run benchmarks on a model: `evaluate` runs the named benchmarks in order (each after the ones whose samples it
reads) and returns flat namespaced metrics and per-sample records, so each number can be recomputed from
samples.jsonl.

    >>> metrics, samples = evaluate(model, processor, "runs/world", ["pope", "chair", "mmhal"], judge=judge)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from mmstudy.benchmarks.registry import REGISTRY
from mmstudy.evaluation.judged import run_amber, run_llava_w, run_mmhal, run_mmhal_v, run_objhal
from mmstudy.evaluation.runners import EvalContext, ImageCache, run_chair, run_headroom, run_masked, run_pope
from mmstudy.judges.base import Judge
from mmstudy.models.decoding import Decoding, parse_decoding

RUNNERS = {
    "pope": run_pope,
    "chair": run_chair,
    "objhal": run_objhal,
    "amber": run_amber,
    "mmhal": run_mmhal,
    "llava_w": run_llava_w,
    "mmhal_v": run_mmhal_v,
    "masked": run_masked,
    "headroom": run_headroom,
}


def summary_table(metrics: dict) -> str:
    """The registry's headline metrics present in `metrics`, each with its 95 % interval where one exists."""
    lines = [f"{'metric':<42} {'value':>9}  95% CI"]
    for spec in REGISTRY.values():
        for key in spec.headline:
            if key not in metrics:
                continue
            low, high = metrics.get(f"{key}_ci95_low"), metrics.get(f"{key}_ci95_high")
            ci = f"[{low:.4f}, {high:.4f}]" if low is not None and high is not None else "-"
            value = "-" if metrics[key] is None else f"{metrics[key]:.4f}"    # null: undefined (no items)
            lines.append(f"{key:<42} {value:>9}  {ci}")
    return "\n".join(lines)


def evaluate(model, processor, data_dir: str | Path, benchmarks: Sequence[str] = ("pope", "chair"), *,
             judge: Judge | None = None, limit: int | None = None, batch_size: int = 64, seed: int = 0,
             objhal_extractor: str = "rule", decoding: Decoding | str = "greedy",
             progress: bool = True) -> tuple[dict, list[dict]]:
    """Run the named benchmarks (see `mmstudy.benchmarks.registry`) on the data in `data_dir` (a world, or real
    releases laid out the same way); returns (flat namespaced metrics, per-sample records). Judged benchmarks
    (mmhal, mmhal_v, llava_w) need `judge`. `decoding`: a `Decoding` or its option text ("greedy", "vcd:alpha=1",
    "pai", `mmstudy.models.decoding`). Each benchmark's registry version is recorded as
    <name>/version."""
    decoding = parse_decoding(decoding) if isinstance(decoding, str) else decoding
    unknown = [b for b in benchmarks if b not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {list(REGISTRY)}")
    benchmarks = with_requirements(benchmarks)
    data_dir = Path(data_dir)
    ctx = EvalContext(data_dir, ImageCache(data_dir / "images"), judge=judge, limit=limit, batch_size=batch_size,
                      seed=seed, progress=progress, objhal_extractor=objhal_extractor, decoding=decoding)
    for name in benchmarks:  # fail before any generation when a judged benchmark has no judge
        if REGISTRY[name].judged or (name == "objhal" and objhal_extractor == "judge"):
            ctx.require_judge(name)
    model.eval()
    metrics = {}
    for name in benchmarks:
        m, s = RUNNERS[name](model, processor, ctx)
        metrics.update(m)
        metrics[f"{name}/version"] = REGISTRY[name].version
        ctx.samples.extend(s)
    return metrics, ctx.samples


def with_requirements(benchmarks: Sequence[str]) -> list[str]:
    """`benchmarks` in order, each preceded by the benchmarks whose samples it reads (`BenchmarkSpec.needs`) when
    they are not asked for already: `headroom` scores the model's POPE and CHAIR answers."""
    out: list[str] = []
    for name in benchmarks:
        out += [n for n in (*REGISTRY[name].needs, name) if n not in out]
    return out
