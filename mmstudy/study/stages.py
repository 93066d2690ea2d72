"""The study's stages as resumable library calls, one per notebook cell: each takes explicit directories, skips
what is already complete there, and returns its numbers.

    world_and_base      a world and a base model trained on it (`01_world_base`)
    evaluate_into       a model's benchmarks into DIR/results.json + DIR/samples.jsonl (any stage)
    preference_data     the world editions of each kind of dataset, built with the base model
                        (`02_preference_data`)
    bdhs_data           BDHS pairs from the base model's own prior (`03_bdhs`)
    align               offline DPO on a preference file, or online / mixed DPO on its prompts, then the
                        aligned model's benchmarks (`05_offline`, `06_online`)
    reinforce           RLOO against a reward model trained here, or GRPO with the world's reward, then the
                        policy's benchmarks, its training curve and collapse flags (the sweep's `rl` axis)

Rerunning a stage after an interruption continues it: the world is written atomically, base training resumes
after its last finished sub-stage, BDHS per example, alignment from its last checkpoint, and a finished output is
never recomputed.

    >>> report = world_and_base("runs/smoke/01_world_base", world_profile="smoke", base_profile="smoke", seed=0)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from mmstudy import io
from mmstudy.benchmarks.pope import MARGINS_FILE
from mmstudy.converters import ConvertConfig, convert
from mmstudy.data.bdhs import (
    BDHSConfig,
    Example,
    ImageLoader,
    SentenceEmbedder,
    load_examples,
    run_bdhs,
)
from mmstudy.data.preferences import load_preferences
from mmstudy.data.preferences import subsample as take
from mmstudy.editions.povid import povid_like_pairs
from mmstudy.editions.sampled import EDITIONS, default_responders, own_responders, world_editions
from mmstudy.evaluation.compare import compare_runs
from mmstudy.evaluation.evaluate import evaluate
from mmstudy.evaluation.runners import pope_margins
from mmstudy.judges.base import check_judge_calls
from mmstudy.judges.registry import make_judge
from mmstudy.models.decoding import parse_decoding
from mmstudy.models.llava import load_llava, read_model_type, save_llava
from mmstudy.runs import build_manifest, derive_seed
from mmstudy.study import options
from mmstudy.study.settings import with_overrides
from mmstudy.training.base import BaseTrainConfig, train_base
from mmstudy.training.dpo import DPOTrainConfig, train_dpo
from mmstudy.training.grpo import GRPOConfig, scenes_of, train_grpo
from mmstudy.training.online import OnlineConfig, pair_source
from mmstudy.training.reward import RewardTrainConfig, load_reward_model, rm_accuracy, train_reward_model
from mmstudy.training.rl_curves import collapse_flags, rl_curve
from mmstudy.training.rloo import RLOOConfig, load_prompts, train_rloo
from mmstudy.training.shift import shift_metrics
from mmstudy.world.files import write_world
from mmstudy.world.layout import load_world_info
from mmstudy.world.scene import WorldSpec

logger = logging.getLogger(__name__)


def ensure_world(world_dir: str | Path, profile: str, seed: int, progress: bool = True) -> dict:
    """The world in `world_dir` (written if absent; a world of another profile or seed there is an error)."""
    world_dir = Path(world_dir)
    spec = WorldSpec.for_profile(profile)
    if (world_dir / "world.json").is_file():
        info = load_world_info(world_dir)
        if info["seed"] != seed or info["spec"] != json.loads(json.dumps(dataclasses.asdict(spec))):
            raise io.DataError(f"{world_dir}: holds a world of another profile or seed than ({profile}, {seed})")
        logger.info("world %s is complete: kept", world_dir)
        return info
    write_world(world_dir, spec, seed=seed, overwrite=True, progress=progress)
    return load_world_info(world_dir)


def ensure_base_model(world_dir: str | Path, model_dir: str | Path, profile: str, seed: int,
                      progress: bool = True, command: str = "train_base", overrides: Sequence[str] = ()) -> dict:
    """A base model trained on the world into `model_dir` (a Hugging Face directory with mmstudy_train.json), or
    the report of the one already there (of the same profile, seed and `overrides`, else an error). `overrides`:
    "KEY=VALUE" settings of `BaseTrainConfig` (`mmstudy.study.settings`). Interrupted training resumes from
    `<model_dir>.stages`."""
    model_dir = Path(model_dir)
    if (model_dir / "mmstudy_train.json").is_file():
        report = io.read_json(model_dir / "mmstudy_train.json")
        made = report.get("manifest", {})
        params = made.get("params", {})
        if made.get("seed") != seed or params.get("profile") != profile or params.get("set", []) != list(overrides):
            raise io.DataError(f"{model_dir}: holds a base model of another profile, seed or settings than "
                               f"({profile}, {seed}, {list(overrides)}); pick another directory")
        logger.info("base model %s is complete: kept", model_dir)
        return report
    cfg = with_overrides(BaseTrainConfig.for_profile(profile, seed=seed), overrides)
    stages = model_dir.with_name(model_dir.name + ".stages")
    start = time.time()
    model, processor, report = train_base(world_dir, cfg, checkpoint_dir=stages, progress=progress)
    report["seconds"] = round(time.time() - start, 1)
    save_llava(model, processor, model_dir)
    manifest = build_manifest(cfg.seed, command, {"world": str(world_dir), "profile": profile,
                                                  "set": list(overrides)})
    report = {"manifest": manifest, **report}
    io.write_json(model_dir / "mmstudy_train.json", report)
    shutil.rmtree(stages, ignore_errors=True)
    return report


def evaluate_into(model_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
                  benchmarks: Sequence[str] = ("pope", "chair"), limit: int | None = None, seed: int = 0,
                  judge: str = "", device: str = "cpu", progress: bool = True, *, decoding: str = "greedy") -> dict:
    """Benchmarks of the model in `model_dir` into out_dir/results.json + samples.jsonl (as `mmstudy eval`
    writes them); an existing results.json with the same benchmarks, limit, judge, decoding and data
    (`data_version`) is kept, otherwise it is replaced and a shift.json derived from the old samples removed.
    `judge`: a `make_judge` spec for the judged benchmarks (mmhal, mmhal_v, llava_w), e.g. "oracle" on a world;
    `decoding`: `mmstudy eval --decoding`'s text. Returns the metrics, with the evaluation's wall time per sample
    ("seconds_per_item": generation, judging and probes; comparable between evaluations of the same benchmarks)."""
    out = Path(out_dir) / "results.json"
    decoding = str(parse_decoding(decoding))
    params = {"model": str(model_dir), "data": str(data_dir), "benchmarks": list(benchmarks), "limit": limit,
              "judge": judge, "decoding": decoding, "data_version": data_version(data_dir)}
    same = ("benchmarks", "limit", "judge", "decoding", "data_version")
    if out.is_file() and (out.parent / "samples.jsonl").is_file():
        done = io.read_json(out)
        made = {"decoding": "greedy", **done["manifest"]["params"]}       # results older than --decoding: greedy
        if {k: made.get(k) for k in same} == {k: params[k] for k in same}:
            logger.info("evaluation %s is complete: kept", out)
            return done["metrics"]
        logger.info("evaluation %s was made with other benchmarks, limit, judge, decoding or data: evaluating again",
                    out)
    judge_obj = None
    if judge:
        judge_obj = make_judge(judge, seed=seed, device=device)
    model, processor = load_llava(model_dir, device=device)
    start = time.time()
    metrics, samples = evaluate(model, processor, data_dir, list(benchmarks), judge=judge_obj, limit=limit,
                                seed=seed, decoding=decoding, progress=progress)
    metrics["seconds_per_item"] = round((time.time() - start) / max(1, len(samples)), 4)
    (out.parent / "shift.json").unlink(missing_ok=True)   # derived from the samples about to be replaced
    io.write_jsonl(out.parent / "samples.jsonl", samples)
    if judge_obj is not None:      # every judge call failed: no results.json, so that a rerun evaluates again
        check_judge_calls(judge_obj)
    io.write_json(out, {"metrics": metrics, "manifest": build_manifest(seed, "evaluate", params)})
    return metrics


def yes_margins(base_run: str | Path, *, device: str = "cpu", progress: bool = True) -> Path:
    """The base model's yes/no log-odds on the POPE questions of its evaluation (`pope_margins`) into
    base_run/eval/yes_margins.jsonl, for the report's yes-ratio control; a file already there is kept (the report
    matches it to other models by question, leaving out questions it lacks). Returns its path."""
    base_run = Path(base_run)
    out = base_run / "eval" / MARGINS_FILE
    if not out.is_file():
        model, processor = load_llava(base_run / "model", device=device)
        samples = io.read_jsonl(base_run / "eval" / "samples.jsonl")
        io.write_jsonl(out, pope_margins(model, processor, base_run / "world", samples, progress=progress))
    return out


def data_version(data_dir: str | Path) -> str | None:
    """What identifies the benchmark items of `data_dir`: a digest of its world.json (version, spec, seed and item
    counts of a world or selection split), or None for data that is not a world."""
    path = Path(data_dir) / "world.json"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def world_and_base(run_dir: str | Path, *, world_profile: str, base_profile: str, seed: int,
                   benchmarks: Sequence[str] = ("pope", "chair"), limit: int | None = None, judge: str = "",
                   model_path: str = "", data_dir: str = "", device: str = "cpu", progress: bool = True) -> dict:
    """`01_world_base`: run_dir/world, run_dir/model and the base model's evaluation in run_dir/eval. With
    `model_path` and `data_dir` (the `paper` profile), run_dir/model and run_dir/world are links to a local
    checkpoint and to benchmark data laid out as a world is (nothing is generated or trained)."""
    run_dir = Path(run_dir)
    if model_path or data_dir:
        report = link_external(run_dir, model_path, data_dir)
    else:
        ensure_world(run_dir / "world", world_profile, seed, progress)
        report = ensure_base_model(run_dir / "world", run_dir / "model", base_profile, seed, progress)
    metrics = evaluate_into(run_dir / "model", run_dir / "world", run_dir / "eval", benchmarks, limit, seed, judge,
                            device, progress)
    return {"train/seconds": report.get("seconds"), **{f"eval/{k}": v for k, v in metrics.items()
                                                       if isinstance(v, (int, float))}}


def link_external(run_dir: str | Path, model_path: str | Path, data_dir: str | Path) -> dict:
    """run_dir/model -> `model_path` (a local LLaVA checkpoint) and run_dir/world -> `data_dir` (benchmark data,
    LLaVA-Instruct and images laid out as a world is), as symbolic links; an existing link to another target is an
    error."""
    run_dir = Path(run_dir)
    if not (model_path and data_dir):
        raise ValueError("give both model_path and data_dir (or neither, to build the world and its base model)")
    model_path, data_dir = Path(model_path).resolve(), Path(data_dir).resolve()
    read_model_type(model_path)                     # a DataError naming the path unless it is a LLaVA checkpoint
    if not data_dir.is_dir():
        raise io.DataError(f"{data_dir}: data_dir not found (benchmark data laid out as a world; see "
                           "docs/benchmarks.md)")
    run_dir.mkdir(parents=True, exist_ok=True)
    for link, target in ((run_dir / "model", model_path), (run_dir / "world", data_dir)):
        if link.is_symlink() or link.exists():
            if link.resolve() != target:
                raise io.DataError(f"{link}: already points to {link.resolve()}, not {target}")
            continue
        link.symlink_to(target, target_is_directory=True)
    return {"model": str(model_path), "data": str(data_dir)}


def converted_data(run_dir: str | Path, base_run: str | Path, *, sources: Sequence[str], subsample: int = 0,
                   seed: int = 0) -> dict:
    """Released preference datasets converted to the schema (`mmstudy.converters`) into run_dir/<name>.jsonl, each
    source written "NAME=KIND:PATH" (e.g. "povid=povid:data/POVID/povid.json", "ranking=vlfeedback:data/vlf",
    "correction=rlhf_v:data/RLHF-V"); images must lie under the base run's world/images. With `subsample`, a
    seeded subset of that many pairs (the paper's 5k). The pairs are written in a seeded random order, so the
    first N of a file (`max_pairs`, an ablation's `size`) are a random subset. A file already there is kept.
    Returns the pair counts."""
    run_dir = Path(run_dir)
    counts = {}
    for spec in sources:
        name, _, rest = spec.partition("=")
        kind, _, path = rest.partition(":")
        if not (name and kind and path):
            raise ValueError(f"source {spec!r}: expected NAME=KIND:PATH, e.g. povid=povid:data/POVID/povid.json")
        out = run_dir / f"{name}.jsonl"
        if not out.is_file():
            records = convert(kind, path, ConvertConfig(image_root=Path(base_run) / "world" / "images",
                                                        seed=seed)).records
            records = take(records, subsample, seed, name=path) if subsample else records
            order = np.random.default_rng(derive_seed(seed, "converted_data", name)).permutation(len(records))
            io.write_jsonl(out, [records[i] for i in order])
        counts[f"pairs/{name}"] = len(io.read_jsonl(out))
    return counts


def preference_data(run_dir: str | Path, base_run: str | Path, *, seed: int, fresh: int, partner_share: float,
                    editions: Sequence[str], edition_prompts: int, mine: bool = True, control_prompts: int = 0,
                    control_samples: int = 4, control_temperature: float = 1.0, progress: bool = True) -> dict:
    """`02_preference_data`: world editions built with the base model of `base_run` (a `01_world_base` run
    directory) into run_dir/<kind>.jsonl: "povid" (POVID-like pairs on `fresh` new scenes; with `mine`, only the
    prompts the model answers wrongly), the sampled `editions` (`mmstudy.editions.sampled`) on `edition_prompts`
    prompts and, with `control_prompts`, the positive control's "oracle" pairs: `control_samples` samples of the
    base model at `control_temperature` per prompt, the best against the worst by the oracle's rating. A file
    already there is kept. New scenes' images are rendered into the base run's world (named by seed, so any stage
    draws the same files). Returns the pair counts."""
    run_dir, base_run = Path(run_dir), Path(base_run)
    world, model_dir = base_run / "world", base_run / "model"
    counts = {}
    if not (run_dir / "povid.jsonl").is_file():
        pairs = povid_like_pairs(world, seed=seed, fresh=fresh, partner_share=partner_share,
                                 mine_with=load_llava(model_dir) if mine else None, progress=progress)
        io.write_jsonl(run_dir / "povid.jsonl", pairs)
    counts["povid"] = len(io.read_jsonl(run_dir / "povid.jsonl"))
    todo = [k for k in editions if not (run_dir / f"{k}.jsonl").is_file()]
    if todo:
        made, _ = world_editions(todo, world, default_responders(model_dir), n=edition_prompts, seed=seed,
                                 progress=progress)
        for kind, pairs in made.items():
            io.write_jsonl(run_dir / f"{kind}.jsonl", pairs)
    counts.update({k: len(io.read_jsonl(run_dir / f"{k}.jsonl")) for k in editions})
    if control_prompts:
        if not (run_dir / "oracle.jsonl").is_file():
            made, _ = world_editions(["oracle"], world, own_responders(model_dir, control_samples,
                                                                       control_temperature),
                                     n=control_prompts, seed=seed, progress=progress)
            io.write_jsonl(run_dir / "oracle.jsonl", made["oracle"])
        counts["oracle"] = len(io.read_jsonl(run_dir / "oracle.jsonl"))
    return {f"pairs/{k}": v for k, v in counts.items()}


def bdhs_data(run_dir: str | Path, base_run: str | Path, *, seed: int, n: int, rho_th: float, iterations: int,
              epsilon: float, embedder: str = "", device: str = "cpu", progress: bool = True) -> dict:
    """`03_bdhs`: BDHS pairs (attention masking) from the base model of `base_run` on n seeded LLaVA-Instruct
    first turns of its world, into run_dir/bdhs.jsonl (resumed per example) and run_dir/bdhs.stats.json.
    `embedder`: a sentence-transformers directory, or empty for the packaged MiniLM. Returns the statistics."""
    run_dir, base_run = Path(run_dir), Path(base_run)
    world = base_run / "world"
    cfg = BDHSConfig(variant="attn", rho_th=rho_th, iterations=iterations, epsilon=epsilon, seed=seed)
    examples = load_examples(world / "llava_instruct_train.json", world / "images", n=n, seed=seed)
    out = _bdhs_pairs(run_dir / "bdhs.jsonl", base_run, examples, cfg, embedder, device, progress)
    stats = io.read_json(out.with_suffix(".stats.json"))["stats"]
    accepted = stats["accepted_share_after_iteration"]
    return {"bdhs/pairs": stats["n"], "bdhs/accepted_share": accepted[-1] if accepted else None,
            "bdhs/similarity_mean": stats["similarity_mean"]}


def align(run_dir: str | Path, base_run: str | Path, *, prefs: str | Path, dpo: DPOTrainConfig,
          online: dict | None = None, max_pairs: int = 0, benchmarks: Sequence[str] = ("pope", "chair"),
          limit: int | None = None, judge: str = "", launch: str = "", device: str = "cpu",
          progress: bool = True) -> dict:
    """`05_offline` / `06_online`: DPO from the base model of `base_run` on the preference file `prefs` (offline),
    or with `online` (an `OnlineConfig`'s fields plus "judge"), into run_dir (model/, checkpoints/, metrics.jsonl,
    train_summary.json; an interrupted run resumes from its last checkpoint, a finished one is kept), then the
    model's benchmarks into run_dir/eval, with `dpo.seed` as their seed too; `max_pairs`: the file's first pairs
    only (0: all); `judge`: for the judged benchmarks (`evaluate_into`). `launch`: train in processes started by
    this command (e.g. "accelerate launch --num_processes 8", with `accelerate config` for FSDP / DeepSpeed)
    through `mmstudy train-dpo` / `train-online`, instead of in this process. Returns training and eval
    metrics."""
    run_dir, base_run = Path(run_dir), Path(base_run)
    world = base_run / "world"
    if not (run_dir / "train_summary.json").is_file():
        pairs = load_preferences(prefs, image_root=world / "images")
        pairs = pairs[:max_pairs] if max_pairs else pairs
        if launch:
            _launch_training(launch, run_dir, base_run, pairs, dpo, online, device)
        else:
            source = None if online is None else _online_source(online, world, dpo.seed, device)
            train_dpo(base_run / "model", pairs, dpo, run_dir, world / "images", device=device, progress=progress,
                      online=source)
    summary = io.read_json(run_dir / "train_summary.json")
    train, evaluated = _trained_and_evaluated(run_dir, base_run, summary, benchmarks, limit, dpo.seed, judge, device,
                                              progress)
    online_stats = {k: v for k, v in (summary.get("online") or {}).items() if isinstance(v, (int, float))}
    return {**train, **online_stats, **evaluated}


def _trained_and_evaluated(run_dir: Path, base_run: Path, summary: dict, benchmarks: Sequence[str],
                           limit: int | None, seed: int, judge: str, device: str, progress: bool
                           ) -> tuple[dict, dict]:
    """A trained run's numbers: `train/*` from its `summary` (train_summary.json), and `eval/*`: its model's
    benchmarks into run_dir/eval (`evaluate_into`) with its shift from the base model (`shift_into`)."""
    metrics = evaluate_into(run_dir / "model", base_run / "world", run_dir / "eval", benchmarks, limit, seed, judge,
                            device, progress)
    metrics |= {f"shift/{k}": v for k, v in shift_into(run_dir / "eval", base_run, device, progress=progress).items()}
    train = {f"train/{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return train, {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}


def decoded(run_dir: str | Path, base_run: str | Path, *, decoding: str, benchmarks: Sequence[str] = ("pope", "chair"),
            limit: int | None = None, seed: int = 0, judge: str = "", device: str = "cpu",
            progress: bool = True) -> dict:
    """A training-free point (the sweep's `decoding` axis, docs/decoding.md): the base model of `base_run` decoded
    with `decoding` (`mmstudy eval --decoding`'s text, e.g. "vcd" or "pai:alpha=0.5") on `benchmarks` into
    run_dir/eval (kept when complete). Returns its eval metrics, with no training (train/steps 0)."""
    run_dir, base_run = Path(run_dir), Path(base_run)
    metrics = evaluate_into(base_run / "model", base_run / "world", run_dir / "eval", benchmarks, limit, seed, judge,
                            device, progress, decoding=decoding)
    return {"train/steps": 0, "train/seconds": 0.0, "decoding": str(parse_decoding(decoding)),
            **{f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}}


RL_MODES = ("rloo", "grpo")
HELD_OUT_SOURCES = ("povid", "ranking", "correction")   # Table 7: each reward model on held-out pairs of each


def reinforce(run_dir: str | Path, base_run: str | Path, *, prompts: str | Path, mode: str,
              rl: RLOOConfig | GRPOConfig, reward_prefs: str | Path | None = None,
              rm: RewardTrainConfig | None = None, data_run: str | Path | None = None, held_out: int = 100,
              size: int = 0, benchmarks: Sequence[str] = ("pope", "chair"), limit: int | None = None,
              judge: str = "", device: str = "cpu", progress: bool = True) -> dict:
    """RL from the base model of `base_run` on the prompts of the file `prompts` (its first `size`; 0: all), into
    run_dir, then the policy's benchmarks into run_dir/eval (`align`'s layout). `mode`:

        rloo    a reward model (`rm`) on the first `size` pairs of `reward_prefs` (never its last `held_out`) into
                run_dir/rm_run, its pairwise accuracy on the last `held_out` pairs of each `HELD_OUT_SOURCES` file
                in `data_run` (run_dir/rm_accuracy.json, the paper's Table 7), then RLOO (`rl`) against it
        grpo    GRPO (`rl`) with the world's exact reward

    Every sample is logged; the run's curve (reward, KL, length, the oracle's hallucination rate and recall per
    step) goes to run_dir/rl_curve.jsonl and its collapse flags to run_dir/collapse.json
    (`mmstudy.training.rl_curves`). Each part is kept when complete and resumed when interrupted. Returns
    training, reward-model, collapse and eval metrics."""
    if mode not in RL_MODES:
        raise ValueError(f"unknown RL mode {mode!r}; choose from {list(RL_MODES)}")
    run_dir, base_run = Path(run_dir), Path(base_run)
    world, model_dir = base_run / "world", base_run / "model"
    images = world / "images"
    records = load_prompts(prompts, image_root=images)
    records = records[:size] if size else records
    found: dict = {}
    if mode == "rloo":
        if reward_prefs is None or rm is None or data_run is None:
            raise ValueError("mode rloo needs reward_prefs, rm (a RewardTrainConfig) and data_run")
        found |= _reward_model(run_dir, model_dir, images, Path(reward_prefs), rm, Path(data_run), held_out, size,
                               device, progress)
    if not (run_dir / "train_summary.json").is_file():
        if mode == "rloo":
            train_rloo(model_dir, run_dir / "rm_run" / "rm", records, rl, run_dir, images, device=device,
                       progress=progress)
        else:
            train_grpo(model_dir, records, rl, run_dir, world, device=device, progress=progress)
    summary = io.read_json(run_dir / "train_summary.json")
    curve = rl_curve(io.read_jsonl(run_dir / "samples.jsonl"), io.read_jsonl(run_dir / "metrics.jsonl"), records,
                     scenes_of(records, world))
    io.write_jsonl(run_dir / "rl_curve.jsonl", curve)
    flags = collapse_flags(curve)
    io.write_json(run_dir / "collapse.json", flags)
    train, evaluated = _trained_and_evaluated(run_dir, base_run, summary, benchmarks, limit, rl.seed, judge, device,
                                              progress)
    collapse = {f"rl/{k}": float(v) if isinstance(v, bool) else v for k, v in flags.items() if v is not None}
    return {**train, **found, **collapse, **evaluated}


def rl_config(mode: str, **fields) -> RLOOConfig | GRPOConfig:
    """The trainer config of an RL `mode` from the fields both share (k, temperature, max_new_tokens, lora_r,
    lora_alpha, lr, beta, steps, batch_size, seed), logging every step's samples (the run's curve reads them)."""
    if mode not in RL_MODES:
        raise ValueError(f"unknown RL mode {mode!r}; choose from {list(RL_MODES)}")
    return (RLOOConfig if mode == "rloo" else GRPOConfig)(**fields, log_samples_every=1)


def _reward_model(run_dir: Path, model_dir: Path, images: Path, reward_prefs: Path, cfg: RewardTrainConfig,
                  data_run: Path, held_out: int, size: int, device: str, progress: bool) -> dict:
    """`reinforce`'s reward model: trained (or kept) into run_dir/rm_run, its held-out accuracy per source into
    run_dir/rm_accuracy.json; returns {"rm/pairs", "rm/accuracy/<source>"}."""
    pairs = load_preferences(reward_prefs, image_root=images)
    if len(pairs) <= held_out:
        raise io.DataError(f"{reward_prefs}: {len(pairs)} pairs; the reward model needs more than the {held_out} "
                           "held out")
    train = pairs[:len(pairs) - held_out][:size or None]
    rm_run = run_dir / "rm_run"
    if not (rm_run / "train_summary.json").is_file():
        train_reward_model(model_dir, train, cfg, rm_run, images, device=device, progress=progress)
    path = run_dir / "rm_accuracy.json"
    if not path.is_file():
        model, processor = load_reward_model(rm_run / "rm", device=device)
        accuracy = {}
        for source in HELD_OUT_SOURCES:
            held = data_run / f"{source}.jsonl"
            if held.is_file():
                test = load_preferences(held, image_root=images)[-held_out:]
                test = [dict(p, source=source) for p in test]
                accuracy[source] = rm_accuracy(model, processor, test, images, seed=cfg.seed)["all"]
        io.write_json(path, {"trained_on": str(reward_prefs), "pairs": len(train), "held_out": held_out,
                             "accuracy": accuracy})
    done = io.read_json(path)
    return {"rm/pairs": done["pairs"], **{f"rm/accuracy/{source}": row["accuracy"]
                                          for source, row in done["accuracy"].items()}}


def shift_into(eval_dir: str | Path, base_run: str | Path, device: str = "cpu", base_eval: str | Path | None = None,
               image_root: str | Path | None = None, progress: bool = True) -> dict:
    """How far the model evaluated in `eval_dir` (its model/ beside it) moved from the base model of `base_run`
    (`mmstudy.training.shift`: KL per token on the caption prompts, share of changed answers), into eval_dir/shift.json
    (kept when there). The base's answers on the same items are in `base_eval` (default base_run/eval), their
    images in `image_root` (default base_run/world/images). {} with a warning when there are no base samples."""
    eval_dir, base_run = Path(eval_dir), Path(base_run)
    out, base_samples = eval_dir / "shift.json", Path(base_eval or base_run / "eval") / "samples.jsonl"
    if out.is_file():
        return io.read_json(out)
    if not base_samples.is_file():
        logger.warning("%s: no base evaluation samples; the shift from the base is not measured", base_samples)
        return {}
    policy, processor = load_llava(eval_dir.parent / "model", device=device)
    base, _ = load_llava(base_run / "model", device=device)
    found = shift_metrics(policy, base, processor, io.read_jsonl(eval_dir / "samples.jsonl"),
                          io.read_jsonl(base_samples), image_root or base_run / "world" / "images", progress)
    io.write_json(out, found)
    return found


def launch_command(launch: str, run_dir: Path, base_run: Path, prefs: Path, cfg, online: dict | None,
                   device: str) -> list[str]:
    """The command line of `align` with `launch`: the launcher's words, then `-m mmstudy train-dpo|train-online`
    with the options that reproduce `cfg` (a `DPOTrainConfig`) and `online` (`mmstudy.study.options`). A setting
    the command line cannot express is an error."""
    world = base_run / "world"
    args = ["-m", "mmstudy", "-q", "train-dpo" if online is None else "train-online",
            "--model", str(base_run / "model"), "--image-root", str(world / "images"), "--out", str(run_dir),
            "--device", device, *options.to_argv(cfg, options.DPO)]
    if online is None:
        args += ["--prefs", str(prefs)]
    else:
        if online.get("epsilon", 0.97) != 0.97:
            raise ValueError("launch: train-online has no --epsilon (online BDHS uses 0.97); train in the kernel")
        online_cfg = _online_config(online, cfg.seed)
        args += ["--world", str(world)] if (world / "world.json").is_file() else []
        args += ["--prompts", str(prefs), *options.to_argv(online_cfg, options.ONLINE),
                 "--judge", online.get("judge", "oracle"), "--rho", repr(online.get("rho_th", 0.99)),
                 "--iterations", str(online.get("iterations", 5))]
        args += ["--embedder", online["embedder"]] if online.get("embedder") else []
    return shlex.split(launch) + args


def _launch_training(launch: str, run_dir: Path, base_run: Path, pairs: list[dict], cfg, online: dict | None,
                     device: str) -> None:
    prefs = run_dir / "train_prefs.jsonl"      # the pairs this run trains on (max_pairs applied)
    io.write_jsonl(prefs, pairs)
    command = launch_command(launch, run_dir, base_run, prefs, cfg, online, device)
    logger.info("training with: %s", " ".join(command))
    stage_manifest = run_dir / "manifest.json"           # the command writes its own manifest over the stage's
    kept = stage_manifest.read_bytes() if stage_manifest.is_file() else None
    done = subprocess.run(command)
    if stage_manifest.is_file() and kept is not None:
        stage_manifest.replace(run_dir / "train_manifest.json")
        io.write_bytes(stage_manifest, kept)
    if done.returncode != 0 or not (run_dir / "train_summary.json").is_file():
        raise RuntimeError(f"{' '.join(command)}: exited with {done.returncode}"
                           + ("" if done.returncode else " without writing train_summary.json"))


_BDHS_ONLINE = ("judge", "rho_th", "iterations", "epsilon", "embedder")


def _online_config(online: dict, seed: int) -> OnlineConfig:
    """The `OnlineConfig` of `align`'s `online`: its fields, without the judge and BDHS settings."""
    return OnlineConfig(**{k: v for k, v in online.items() if k not in _BDHS_ONLINE}, seed=seed)


def _online_source(online: dict, world: Path, seed: int, device: str = "cpu"):
    """The online pair source of `align`: `OnlineConfig` fields plus "judge" (online_dpo, mixed) or the BDHS
    "rho_th", "iterations", "epsilon" and "embedder" (online_bdhs, online_bdhs_avg)."""
    return pair_source(_online_config(online, seed), world / "images", world, online.get("judge", "oracle"), None,
                       online.get("rho_th", 0.99), online.get("iterations", 5), online.get("epsilon", 0.97),
                       online.get("embedder") or None, device)


def _bdhs_pairs(out: Path, base_run: Path, examples, cfg, embedder: str, device: str, progress: bool) -> Path:
    model_dir = base_run / "model"
    sentence_embedder = SentenceEmbedder(embedder or None, device=device)
    provenance = {"model": str(model_dir), "model_revision": io.fingerprint(model_dir),
                  "embedder": sentence_embedder.name}
    model, processor = load_llava(model_dir, device=device)
    stats = run_bdhs(model, processor, examples, cfg, sentence_embedder, ImageLoader(base_run / "world" / "images"),
                     out, provenance, progress=progress)
    io.write_json(out.with_suffix(".stats.json"), {"stats": stats, "config_hash": cfg.config_hash()})
    return out


def ablation_data(shared_dir: str | Path, base_run: str | Path, *, data_run: str | Path, bdhs_run: str | Path,
                  seed: int, data: str, size: int, fresh: int = 0, bdhs: dict | None = None,
                  edition_prompts: int = 1000, mine: bool = True, device: str = "cpu", progress: bool = True) -> Path:
    """The preference file of one ablation point (`_ablation_file`), checked to hold at least `size` pairs (a
    point trains on its first `size`)."""
    path = _ablation_file(shared_dir, base_run, data_run, bdhs_run, seed, data, size, fresh, bdhs, edition_prompts,
                          mine, device, progress)
    n = len(io.read_jsonl(path))
    if n < size:
        raise io.DataError(f"{path}: {n} pairs, fewer than the point's size {size}; raise fresh (POVID-like), "
                           "edition_prompts (editions) or lower size")
    return path


def _ablation_file(shared_dir: str | Path, base_run: str | Path, data_run: str | Path, bdhs_run: str | Path,
                   seed: int, data: str, size: int, fresh: int = 0, bdhs: dict | None = None,
                   edition_prompts: int = 1000, mine: bool = True, device: str = "cpu", progress: bool = True
                   ) -> Path:
    """The preference file of one ablation point (`07_ablations`), reused from the chain where it is the same data
    and otherwise built once into `shared_dir` (named by its settings, so points that share data share the file):

        povid               POVID-like pairs: `data_run`/povid.jsonl, or with `fresh` > 0 a set from that many new
                            scenes (mined with `mine`; the dataset-size sweep)
        bdhs                BDHS pairs with the settings `bdhs` (`BDHSConfig` fields plus "embedder") on `size`
                            LLaVA-Instruct first turns: `bdhs_run`/bdhs.jsonl when they are the chain's
        povid+bdhs          POVID-like pairs with a BDHS rejection of the same prompt and y+ as `rejected_2` (Avg-DPO)
        an edition kind     `mmstudy.editions.sampled.EDITIONS`: `data_run`/<kind>.jsonl, or built on
                            `edition_prompts` prompts
    """
    shared, base_run, data_run, bdhs_run = Path(shared_dir), Path(base_run), Path(data_run), Path(bdhs_run)
    world = base_run / "world"
    bdhs = dict(bdhs or {})
    embedder = bdhs.pop("embedder", "")
    cfg = BDHSConfig(**bdhs, seed=seed)
    if data == "povid":
        if not fresh:
            return data_run / "povid.jsonl"
        out = shared / f"povid_fresh{fresh}.jsonl"
        if not out.is_file():
            preference_data(shared / f"povid_fresh{fresh}", base_run, seed=seed, fresh=fresh, partner_share=0.5,
                            editions=(), edition_prompts=0, mine=mine, progress=progress)
            (shared / f"povid_fresh{fresh}" / "povid.jsonl").replace(out)
        return out
    if data == "bdhs":
        chain = io.read_json(bdhs_run / "bdhs.stats.json")
        if chain["config_hash"] == cfg.config_hash() and chain["stats"]["n"] >= size:
            return bdhs_run / "bdhs.jsonl"
        examples = load_examples(world / "llava_instruct_train.json", world / "images", n=size, seed=seed)
        return _bdhs_pairs(shared / f"bdhs_{cfg.config_hash()}_n{size}.jsonl", base_run, examples, cfg, embedder,
                           device, progress)
    if data == "povid+bdhs":
        out = shared / f"povid+bdhs_{cfg.config_hash()}_n{size}.jsonl"
        if not out.is_file():
            povid = io.read_jsonl(ablation_data(shared, base_run, data_run=data_run, bdhs_run=bdhs_run, seed=seed,
                                                data="povid", size=size, fresh=fresh, mine=mine, progress=progress))
            povid = povid[:size]
            examples = [Example(str(p["id"]), p["image"], p["prompt"], p["chosen"]) for p in povid]
            made = _bdhs_pairs(shared / f"bdhs_of_povid_{cfg.config_hash()}_n{size}.jsonl", base_run, examples,
                               cfg, embedder, device, progress)
            rejected_2 = {r["id"]: r["rejected"] for r in io.read_jsonl(made)}
            missing = [p["id"] for p in povid if str(p["id"]) not in rejected_2]
            if missing:
                raise io.DataError(f"{made}: no BDHS rejection for {len(missing)} POVID-like pair(s), e.g. "
                                   f"{missing[:3]}")
            io.write_jsonl(out, [{**p, "rejected_2": rejected_2[str(p["id"])]} for p in povid])
        return out
    if data in EDITIONS:
        if (data_run / f"{data}.jsonl").is_file():
            return data_run / f"{data}.jsonl"
        out = shared / f"{data}.jsonl"
        if not out.is_file():
            made, _ = world_editions([data], world, default_responders(base_run / "model"), n=edition_prompts,
                                     seed=seed, progress=progress)
            io.write_jsonl(out, made[data])
        return out
    raise ValueError(f"unknown ablation data {data!r}; choose from povid, bdhs, povid+bdhs or {list(EDITIONS)}")


def evaluation(run_dir: str | Path, *, runs: Sequence[str | Path], names: Sequence[str], world: str | Path, seed: int,
               benchmarks: Sequence[str] = (), judge: str = "", limit: int | None = None, device: str = "cpu",
               progress: bool = True) -> dict:
    """`08_evaluation`: the models of `runs` (run directories with model/ and eval/, the first one the reference,
    usually the base model) on the further `benchmarks` into run_dir/<name>/, then every model against the first,
    item by item (`compare_runs`: paired bootstrap over the items both answered) into run_dir/comparisons.json,
    and the first model's yes/no margins (`yes_margins`) for the report's yes-ratio control. Returns
    {"<name>/<benchmark>/<metric>/diff|low|high": ...} for the models after the first."""
    if len(runs) != len(names) or len(set(names)) != len(names):
        raise ValueError(f"runs and names must pair one to one with unique names, got {len(runs)} runs and "
                         f"names {list(names)}")
    run_dir = Path(run_dir)
    yes_margins(runs[0], device=device, progress=progress)
    samples = {}
    for name, run in zip(names, runs):
        samples[name] = io.read_jsonl(Path(run) / "eval" / "samples.jsonl")
        if benchmarks:
            evaluate_into(Path(run) / "model", world, run_dir / name, benchmarks, limit, seed, judge, device,
                          progress)
            samples[name] += io.read_jsonl(run_dir / name / "samples.jsonl")
    reference, *others = names
    comparisons = {name: compare_runs(samples[reference], samples[name], seed=seed) for name in others}
    io.write_json(run_dir / "comparisons.json", {"reference": reference, "comparisons": comparisons})
    return {f"{name}/{metric}/{part}": row[part] for name, rows in comparisons.items()
            for metric, row in rows.items() for part in ("diff", "low", "high")}
