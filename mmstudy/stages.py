"""The study's stages as resumable library calls, one per notebook cell: each takes explicit directories, skips
what is already complete there, and returns its numbers.

    world_and_base      a world and a base model trained on it (`01_world_base`)
    evaluate_into       a model's benchmarks into DIR/results.json + DIR/samples.jsonl (any stage)
    preference_data     the world editions of each kind of dataset, built with the base model
                        (`02_preference_data`)
    bdhs_data           BDHS pairs from the base model's own prior (`03_bdhs`)
    align               offline DPO on a preference file, or online / mixed DPO on its prompts, then the
                        aligned model's benchmarks (`05_offline`, `06_online`)

Rerunning a stage after an interruption continues it: the world is written atomically, base training resumes
after its last finished sub-stage, BDHS per example, alignment from its last checkpoint, and a finished output is
never recomputed.

    >>> report = world_and_base("runs/smoke/01_world_base", world_profile="smoke", base_profile="smoke", seed=0)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Sequence

from mmstudy import io

logger = logging.getLogger(__name__)


def ensure_world(world_dir: str | Path, profile: str, seed: int, progress: bool = True) -> dict:
    """The world in `world_dir` (written if absent; a world of another profile or seed there is an error)."""
    from mmstudy.world import WorldSpec
    from mmstudy.world_files import load_world_info, write_world

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
                      progress: bool = True, command: str = "train_base") -> dict:
    """A base model trained on the world into `model_dir` (a Hugging Face directory with mmstudy_train.json), or
    the report of the one already there (of the same profile and seed, else an error). Interrupted training resumes
    from `<model_dir>.stages`."""
    from mmstudy.base import BaseTrainConfig, train_base
    from mmstudy.model import save_llava
    from mmstudy.runs import build_manifest

    model_dir = Path(model_dir)
    if (model_dir / "mmstudy_train.json").is_file():
        report = io.read_json(model_dir / "mmstudy_train.json")
        made = report.get("manifest", {})
        if made.get("seed") != seed or made.get("params", {}).get("profile") != profile:
            raise io.DataError(f"{model_dir}: holds a base model of another profile or seed than ({profile}, {seed}); "
                               "pick another directory")
        logger.info("base model %s is complete: kept", model_dir)
        return report
    cfg = BaseTrainConfig.for_profile(profile, seed=seed)
    stages = model_dir.with_name(model_dir.name + ".stages")
    start = time.time()
    model, processor, report = train_base(world_dir, cfg, checkpoint_dir=stages, progress=progress)
    report["seconds"] = round(time.time() - start, 1)
    save_llava(model, processor, model_dir)
    manifest = build_manifest(cfg.seed, command, {"world": str(world_dir), "profile": profile})
    report = {"manifest": manifest, **report}
    io.write_json(model_dir / "mmstudy_train.json", report)
    shutil.rmtree(stages, ignore_errors=True)
    return report


def evaluate_into(model_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
                  benchmarks: Sequence[str] = ("pope", "chair"), limit: int | None = None, seed: int = 0,
                  judge: str = "", progress: bool = True) -> dict:
    """Benchmarks of the model in `model_dir` into out_dir/results.json + samples.jsonl (as `mmstudy eval`
    writes them); an existing results.json with the same benchmarks, limit and judge is kept. `judge`: a
    `make_judge` spec for the judged benchmarks (mmhal, mmhal_v, llava_w), e.g. "oracle" on a world. Returns the
    metrics."""
    from mmstudy.evaluate import evaluate
    from mmstudy.model import load_llava
    from mmstudy.runs import build_manifest

    out = Path(out_dir) / "results.json"
    params = {"model": str(model_dir), "data": str(data_dir), "benchmarks": list(benchmarks), "limit": limit,
              "judge": judge}
    if out.is_file() and (out.parent / "samples.jsonl").is_file():
        done = io.read_json(out)
        if {k: done["manifest"]["params"].get(k) for k in ("benchmarks", "limit", "judge")} == \
                {k: params[k] for k in ("benchmarks", "limit", "judge")}:
            logger.info("evaluation %s is complete: kept", out)
            return done["metrics"]
    judge_obj = None
    if judge:
        from mmstudy.judges import make_judge

        judge_obj = make_judge(judge, seed=seed)
    model, processor = load_llava(model_dir)
    metrics, samples = evaluate(model, processor, data_dir, list(benchmarks), judge=judge_obj, limit=limit,
                                seed=seed, progress=progress)
    io.write_jsonl(out.parent / "samples.jsonl", samples)
    io.write_json(out, {"metrics": metrics, "manifest": build_manifest(seed, "evaluate", params)})
    return metrics


def world_and_base(run_dir: str | Path, world_profile: str, base_profile: str, seed: int,
                   benchmarks: Sequence[str] = ("pope", "chair"), limit: int | None = None, judge: str = "",
                   progress: bool = True) -> dict:
    """`01_world_base`: run_dir/world, run_dir/model and the base model's evaluation in run_dir/eval."""
    run_dir = Path(run_dir)
    ensure_world(run_dir / "world", world_profile, seed, progress)
    report = ensure_base_model(run_dir / "world", run_dir / "model", base_profile, seed, progress)
    metrics = evaluate_into(run_dir / "model", run_dir / "world", run_dir / "eval", benchmarks, limit, seed, judge,
                            progress)
    return {"train/seconds": report.get("seconds"), **{f"eval/{k}": v for k, v in metrics.items()
                                                       if isinstance(v, (int, float))}}


def preference_data(run_dir: str | Path, base_run: str | Path, seed: int, fresh: int, partner_share: float,
                    editions: Sequence[str], edition_prompts: int, mine: bool = True, progress: bool = True) -> dict:
    """`02_preference_data`: world editions built with the base model of `base_run` (a `01_world_base` run
    directory) into run_dir/<kind>.jsonl: "povid" (POVID-like pairs on `fresh` new scenes; with `mine`, only the
    prompts the model answers wrongly) and the sampled `editions` (`mmstudy.world_editions`) on `edition_prompts`
    prompts. A file already there is kept. New scenes' images are rendered into the base run's world (named by
    seed, so any stage draws the same files). Returns the pair counts."""
    from mmstudy.model import load_llava
    from mmstudy.world_editions import default_responders, world_editions
    from mmstudy.world_prefs import povid_like_pairs

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
    return {f"pairs/{k}": v for k, v in counts.items()}


def bdhs_data(run_dir: str | Path, base_run: str | Path, seed: int, n: int, rho_th: float, iterations: int,
              epsilon: float, embedder: str = "", progress: bool = True) -> dict:
    """`03_bdhs`: BDHS pairs (attention masking) from the base model of `base_run` on n seeded LLaVA-Instruct
    first turns of its world, into run_dir/bdhs.jsonl (resumed per example) and run_dir/bdhs.stats.json.
    `embedder`: a sentence-transformers directory, or empty for the packaged MiniLM. Returns the statistics."""
    from mmstudy.bdhs import BDHSConfig, ImageLoader, SentenceEmbedder, load_examples, model_fingerprint, run_bdhs
    from mmstudy.model import load_llava

    run_dir, base_run = Path(run_dir), Path(base_run)
    world, model_dir = base_run / "world", base_run / "model"
    cfg = BDHSConfig(variant="attn", rho_th=rho_th, iterations=iterations, epsilon=epsilon, seed=seed)
    examples = load_examples(world / "llava_instruct_train.json", world / "images", n=n, seed=seed)
    model, processor = load_llava(model_dir)
    sentence_embedder = SentenceEmbedder(embedder or None)
    provenance = {"model": str(model_dir), "model_revision": model_fingerprint(model_dir),
                  "embedder": sentence_embedder.name}
    stats = run_bdhs(model, processor, examples, cfg, sentence_embedder, ImageLoader(world / "images"),
                     run_dir / "bdhs.jsonl", provenance, progress=progress)
    io.write_json(run_dir / "bdhs.stats.json", {"stats": stats, "config_hash": cfg.config_hash()})
    accepted = stats["accepted_share_after_iteration"]
    return {"bdhs/pairs": stats["n"], "bdhs/accepted_share": accepted[-1] if accepted else None,
            "bdhs/similarity_mean": stats["similarity_mean"]}


def align(run_dir: str | Path, base_run: str | Path, prefs: str | Path, seed: int, dpo: dict,
          online: dict | None = None, max_pairs: int = 0, benchmarks: Sequence[str] = ("pope", "chair"),
          limit: int | None = None, judge: str = "", progress: bool = True) -> dict:
    """`05_offline` / `06_online`: DPO from the base model of `base_run` on the preference file `prefs` (offline),
    or with `online` (an `OnlineConfig`'s fields plus "judge"), into run_dir (model/, checkpoints/, metrics.jsonl,
    train_summary.json; an interrupted run resumes from its last checkpoint, a finished one is kept), then the
    model's benchmarks into run_dir/eval. `dpo`: `DPOTrainConfig` fields; `max_pairs`: the file's first pairs
    only (0: all); `judge`: for the judged benchmarks (`evaluate_into`). Returns training and eval metrics."""
    from mmstudy.dpo import DPOTrainConfig, train_dpo
    from mmstudy.preferences import load_preferences

    run_dir, base_run = Path(run_dir), Path(base_run)
    world = base_run / "world"
    if not (run_dir / "train_summary.json").is_file():
        pairs = load_preferences(prefs, image_root=world / "images")
        pairs = pairs[:max_pairs] if max_pairs else pairs
        source = None if online is None else _online_source(online, world, seed)
        train_dpo(base_run / "model", pairs, DPOTrainConfig(**dpo, seed=seed), run_dir, world / "images",
                  progress=progress, online=source)
    summary = io.read_json(run_dir / "train_summary.json")
    metrics = evaluate_into(run_dir / "model", world, run_dir / "eval", benchmarks, limit, seed, judge, progress)
    train = {f"train/{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    online_stats = {k: v for k, v in (summary.get("online") or {}).items() if isinstance(v, (int, float))}
    return {**train, **online_stats, **{f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}}


_BDHS_ONLINE = ("judge", "rho_th", "iterations", "embedder")


def _online_source(online: dict, world: Path, seed: int):
    """The online pair source of `align`: `OnlineConfig` fields plus "judge" (online_dpo, mixed) or the BDHS
    "rho_th", "iterations" and "embedder" (online_bdhs, online_bdhs_avg)."""
    from mmstudy.online import OnlineConfig, OnlinePairs, world_scenes

    cfg = OnlineConfig(**{k: v for k, v in online.items() if k not in _BDHS_ONLINE}, seed=seed)
    judge = bdhs_cfg = embedder = None
    if cfg.needs_judge:
        from mmstudy.judges import make_judge

        judge = make_judge(online["judge"], seed=seed)
    else:
        from mmstudy.bdhs import BDHSConfig, SentenceEmbedder

        bdhs_cfg = BDHSConfig(variant="attn", rho_th=online.get("rho_th", 0.99),
                              iterations=online.get("iterations", 5), seed=seed)
        embedder = SentenceEmbedder(online.get("embedder") or None)
    return OnlinePairs(cfg, judge=judge, scenes=world_scenes(world), bdhs_cfg=bdhs_cfg, embedder=embedder,
                       image_root=world / "images")


def _bdhs_pairs(out: Path, base_run: Path, examples, cfg, embedder: str, progress: bool) -> Path:
    from mmstudy.bdhs import ImageLoader, SentenceEmbedder, model_fingerprint, run_bdhs
    from mmstudy.model import load_llava

    model_dir = base_run / "model"
    sentence_embedder = SentenceEmbedder(embedder or None)
    provenance = {"model": str(model_dir), "model_revision": model_fingerprint(model_dir),
                  "embedder": sentence_embedder.name}
    model, processor = load_llava(model_dir)
    run_bdhs(model, processor, examples, cfg, sentence_embedder, ImageLoader(base_run / "world" / "images"), out,
             provenance, progress=progress)
    return out


def ablation_data(shared_dir: str | Path, base_run: str | Path, data_run: str | Path, bdhs_run: str | Path,
                  seed: int, data: str, size: int, fresh: int = 0, bdhs: dict | None = None,
                  edition_prompts: int = 1000, progress: bool = True) -> Path:
    """The preference file of one ablation point (`07_ablations`), reused from the chain where it is the same data
    and otherwise built once into `shared_dir` (named by its settings, so points that share data share the file):

        povid               POVID-like pairs: `data_run`/povid.jsonl, or with `fresh` > 0 a set mined from that many
                            new scenes (the dataset-size sweep)
        bdhs                BDHS pairs with the settings `bdhs` (`BDHSConfig` fields plus "embedder") on `size`
                            LLaVA-Instruct first turns: `bdhs_run`/bdhs.jsonl when they are the chain's
        povid+bdhs          POVID-like pairs with a BDHS rejection of the same prompt and y+ as `rejected_2` (Avg-DPO)
        an edition kind     `mmstudy.world_editions.EDITIONS`: `data_run`/<kind>.jsonl, or built on
                            `edition_prompts` prompts
    """
    from mmstudy.bdhs import BDHSConfig, Example, load_examples
    from mmstudy.world_editions import EDITIONS, default_responders, world_editions

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
            preference_data(shared / f"povid_fresh{fresh}", base_run, seed, fresh, 0.5, (), 0, progress=progress)
            (shared / f"povid_fresh{fresh}" / "povid.jsonl").replace(out)
        return out
    if data == "bdhs":
        chain = io.read_json(bdhs_run / "bdhs.stats.json")
        if chain["config_hash"] == cfg.config_hash() and chain["stats"]["n"] >= size:
            return bdhs_run / "bdhs.jsonl"
        examples = load_examples(world / "llava_instruct_train.json", world / "images", n=size, seed=seed)
        return _bdhs_pairs(shared / f"bdhs_{cfg.config_hash()}_n{size}.jsonl", base_run, examples, cfg, embedder,
                           progress)
    if data == "povid+bdhs":
        out = shared / f"povid+bdhs_{cfg.config_hash()}_n{size}.jsonl"
        if not out.is_file():
            povid = io.read_jsonl(ablation_data(shared, base_run, data_run, bdhs_run, seed, "povid", size, fresh))
            povid = povid[:size]
            examples = [Example(str(p["id"]), p["image"], p["prompt"], p["chosen"]) for p in povid]
            made = _bdhs_pairs(shared / f"bdhs_of_povid_{cfg.config_hash()}_n{size}.jsonl", base_run, examples,
                               cfg, embedder, progress)
            rejected_2 = {r["id"]: r["rejected"] for r in io.read_jsonl(made)}
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
