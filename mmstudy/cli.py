"""The `mmstudy` command (also `python -m mmstudy`).

    mmstudy world --out world --profile default --seed 0
    mmstudy train-base --world world --out models/base --profile default
    mmstudy eval --model models/base --data world --benchmarks pope,chair,objhal,amber,mmhal,mmhal_v,llava_w \
        --judge oracle --out runs/base/results.json
    mmstudy score pope --questions world/pope/world_pope_random.json --answers answers.jsonl
    mmstudy score chair --captions captions.json --coco-annotations world/annotations --synonyms world/synonyms.txt
    mmstudy compare runs/base/samples.jsonl runs/aligned/samples.jsonl
    mmstudy bdhs --model models/base --sft world/llava_instruct_train.json --image-root world/images --out prefs.jsonl
    mmstudy convert povid --input POVID_preference_data_for_VLLMs.json --image-root coco/train2014 --out povid.jsonl
    mmstudy prefs-mix povid.jsonl:5000 rlhf_v.jsonl --seed 0 --out mix.jsonl --val 500 --val-out val.jsonl
    mmstudy review povid.jsonl rlhf_v.parquet --out review --tokenizer models/base
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mmstudy import io

logger = logging.getLogger("mmstudy")


def _world(args) -> None:
    from mmstudy.world import WorldSpec
    from mmstudy.world_files import write_world

    if args.benchmarks_only:
        from mmstudy.world_benchmarks import write_benchmark_editions

        counts = write_benchmark_editions(args.out)
        logger.info("wrote benchmark editions into %s: %s", args.out, counts)
        return
    from mmstudy.settings import with_overrides

    spec = with_overrides(WorldSpec.for_profile(args.profile), args.set)
    summary = write_world(args.out, spec, seed=args.seed, overwrite=args.overwrite, progress=not args.quiet)
    logger.info("wrote world to %s: %s", args.out, summary["counts"])


def _train_base(args) -> None:
    from mmstudy.stages import ensure_base_model

    report = ensure_base_model(args.world, args.out, args.profile, args.seed, progress=not args.quiet,
                               command=" ".join(sys.argv), overrides=args.set)
    logger.info("base model in %s (%.0f s of training)", args.out, report.get("seconds") or 0)


def _eval(args) -> None:
    from mmstudy.evaluate import evaluate, summary_table
    from mmstudy.judges import make_judge
    from mmstudy.model import load_llava
    from mmstudy.runs import build_manifest

    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    judge = (make_judge(args.judge, seed=args.seed, cache_dir=args.judge_cache, device=args.device)
             if args.judge else None)
    model, processor = load_llava(args.model, device=args.device, dtype=args.dtype)
    metrics, samples = evaluate(model, processor, args.data, benchmarks, judge=judge, limit=args.limit,
                                batch_size=args.batch_size, seed=args.seed, objhal_extractor=args.objhal_extractor,
                                progress=not args.quiet)
    out = Path(args.out)
    params = {"model": str(args.model), "data": str(args.data), "benchmarks": benchmarks, "limit": args.limit,
              "judge": args.judge, "batch_size": args.batch_size, "objhal_extractor": args.objhal_extractor,
              "device": args.device, "dtype": args.dtype}
    io.write_jsonl(out.with_name("samples.jsonl"), samples)
    io.write_json(out, {"metrics": metrics, "manifest": build_manifest(args.seed, " ".join(sys.argv), params)})
    print(summary_table(metrics))  # noqa: T201 (the command's output)
    logger.info("wrote %s and %s", out, out.with_name("samples.jsonl"))


def _score(args) -> None:
    import json

    from mmstudy.evaluate import score_chair_file, score_pope_file

    if args.benchmark == "pope":
        metrics = score_pope_file(args.questions, args.answers, parser=args.parser)
    elif args.benchmark == "chair":
        metrics = score_chair_file(args.captions, args.coco_annotations, args.synonyms, fixed=args.fixed)
    elif args.benchmark == "objhal":
        from mmstudy.evaluate_suite import score_objhal_file

        metrics = score_objhal_file(args.answers, args.coco_annotations, args.questions, args.synonyms)
    elif args.benchmark == "amber":
        from mmstudy.benchmarks.amber import score_amber_files

        metrics, _ = score_amber_files(args.responses, args.data, parser=args.parser)
    elif args.benchmark == "mmhal":
        from mmstudy.evaluate_suite import score_mmhal_file
        from mmstudy.judges import make_judge

        judge = make_judge(args.judge, cache_dir=args.judge_cache)
        metrics = score_mmhal_file(args.responses, judge, args.images, args.world, with_image=args.with_image)
    else:
        from mmstudy.benchmarks.llava_bench import load_reviews, score_reviews

        metrics = score_reviews(load_reviews(args.reviews), mode=args.mode)
    if args.out is not None:
        io.write_json(args.out, metrics)
        logger.info("wrote %s", args.out)
    else:
        print(json.dumps(metrics, indent=1, sort_keys=True))  # noqa: T201 (the command's output)


def _bdhs(args) -> None:
    from mmstudy.bdhs import BDHSConfig, ImageLoader, SentenceEmbedder, load_examples, model_fingerprint, run_bdhs
    from mmstudy.model import load_llava
    from mmstudy.runs import build_manifest

    cfg = BDHSConfig(variant=args.variant, rho_th=args.rho, iterations=args.iterations, epsilon=args.epsilon,
                     noise_steps=args.noise_steps, max_sentence_tokens=args.max_sentence_tokens, seed=args.seed)
    examples = load_examples(args.sft, args.image_root, n=args.n, seed=args.seed)
    model, processor = load_llava(args.model, device=args.device)
    embedder = SentenceEmbedder(args.embedder, device=args.device)
    provenance = {"model": str(args.model), "model_revision": model_fingerprint(args.model), "embedder": embedder.name}
    stats = run_bdhs(model, processor, examples, cfg, embedder, ImageLoader(args.image_root), args.out, provenance,
                     batch_size=args.batch_size, progress=not args.quiet)
    out = Path(args.out)
    if args.world is not None:
        from mmstudy.oracle import pair_report
        from mmstudy.world_files import load_scenes, load_world_info

        scenes = {f"{s.image_id}.png": s for s in load_scenes(args.world)}
        wanted = {ex.id for ex in examples}
        stats["world"] = pair_report([r for r in io.read_jsonl(out) if r["id"] in wanted], scenes,
                                     load_world_info(args.world)["cooccurrence"]["p_given"])
        logger.info("against the world's ground truth: %s", {k: v for k, v in stats["world"].items()
                                                              if k != "top_hallucinated"})
    params = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}
    params["config_hash"] = cfg.config_hash()
    io.write_json(out.with_name(out.stem + ".stats.json"),
                  {"stats": stats, "manifest": build_manifest(args.seed, " ".join(sys.argv), params)})
    from mmstudy.plots import bdhs_figure

    with io.atomic_path(out.with_name(out.stem + ".stats.png")) as tmp:
        bdhs_figure(stats).savefig(tmp, dpi=120, format="png")
    logger.info("%s: %d pairs; accepted after each iteration: %s; mean similarity %.3f, length ratio %.2f", out,
                stats["n"], [round(a, 3) for a in stats["accepted_share_after_iteration"]],
                stats["similarity_mean"], stats["length_ratio_mean"])


def _dpo_config(args):
    from mmstudy.dpo import DPOTrainConfig

    return DPOTrainConfig(loss=args.loss, beta=args.beta, gamma=args.gamma, lora_r=args.lora_r,
                          lora_alpha=args.lora_alpha, lr=args.lr, projector_lr=args.projector_lr,
                          train_vision=args.train_vision, train_projector=not args.freeze_projector,
                          train_lm=not args.freeze_lm, epochs=args.epochs, batch_size=args.batch_size,
                          max_length=args.max_length, on_too_long=args.on_too_long,
                          precompute_ref=getattr(args, "precompute_ref", False),
                          checkpoint_every=args.checkpoint_every, merge=not args.adapter_only, seed=args.seed)


def _run_trainer(args, pairs_path: Path, online=None) -> None:
    from mmstudy.dpo import train_dpo
    from mmstudy.preferences import load_preferences
    from mmstudy.runs import build_manifest

    pairs = load_preferences(pairs_path, image_root=args.image_root)
    summary = train_dpo(args.model, pairs, _dpo_config(args), args.out, args.image_root, device=args.device,
                        progress=not args.quiet, online=online)
    params = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}
    io.write_json(Path(args.out) / "manifest.json", build_manifest(args.seed, " ".join(sys.argv), params))
    logger.info("trained %d steps on %d records; model in %s%s", summary["steps"], summary["pairs"],
                Path(args.out) / "model", f"; online: {summary['online']}" if online is not None else "")


def _train_dpo(args) -> None:
    _run_trainer(args, args.prefs)


def _params(args) -> dict:
    return {k: [str(x) for x in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items() if k != "func"}


def _rm_accuracies(rm_dir: Path, prefs: list[Path], image_root: Path, args) -> dict:
    from mmstudy.preferences import load_preferences
    from mmstudy.reward import accuracy_table, load_reward_model, rm_accuracy

    rm, processor = load_reward_model(rm_dir, device=args.device)
    result = {str(p): rm_accuracy(rm, processor, load_preferences(p, image_root=image_root), image_root,
                                  batch_size=args.eval_batch_size, seed=args.seed, progress=not args.quiet)
              for p in prefs}
    logger.info("reward-model pairwise accuracy on held-out pairs:\n%s", accuracy_table(result))
    return result


def _train_rm(args) -> None:
    from mmstudy.preferences import load_preferences
    from mmstudy.reward import RewardTrainConfig, train_reward_model
    from mmstudy.runs import build_manifest

    cfg = RewardTrainConfig(lora_r=args.lora_r, lora_alpha=args.lora_alpha, train_projector=args.train_projector,
                            lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, schedule=args.schedule,
                            warmup_ratio=args.warmup_ratio, center=args.center, max_length=args.max_length,
                            on_too_long=args.on_too_long, checkpoint_every=args.checkpoint_every, seed=args.seed)
    pairs = load_preferences(args.prefs, image_root=args.image_root)
    eval_root = args.eval_image_root or args.image_root
    for path in args.eval_prefs:           # malformed held-out files stop the run before training, not after
        load_preferences(path, image_root=eval_root)
    summary = train_reward_model(args.model, pairs, cfg, args.out, args.image_root, device=args.device,
                                 progress=not args.quiet)
    out = Path(args.out)
    manifest = build_manifest(args.seed, " ".join(sys.argv), _params(args))
    io.write_json(out / "manifest.json", manifest)
    logger.info("trained the reward model %d steps on %d pairs: %s", summary["steps"], summary["pairs"], out / "rm")
    if args.eval_prefs:
        accuracy = _rm_accuracies(out / "rm", args.eval_prefs, eval_root, args)
        io.write_json(out / "accuracy.json", {"accuracy": accuracy, "manifest": manifest})


def _eval_rm(args) -> None:
    from mmstudy.reward import accuracy_table
    from mmstudy.runs import build_manifest

    accuracy = _rm_accuracies(args.rm, args.prefs, args.image_root, args)
    if args.out is not None:
        io.write_json(args.out, {"accuracy": accuracy,
                                 "manifest": build_manifest(args.seed, " ".join(sys.argv), _params(args))})
    print(accuracy_table(accuracy))  # noqa: T201 (the command's output)


def _train_rloo(args) -> None:
    from mmstudy.rloo import RLOOConfig, load_prompts, train_rloo
    from mmstudy.runs import build_manifest

    cfg = RLOOConfig(k=args.k, beta=args.beta, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                     normalize=args.normalize, lora_r=args.lora_r, lora_alpha=args.lora_alpha, lr=args.lr,
                     steps=args.steps, batch_size=args.batch_size, micro_batch=args.micro_batch,
                     log_samples_every=args.log_samples_every, checkpoint_every=args.checkpoint_every,
                     merge=not args.adapter_only, seed=args.seed)
    prompts = load_prompts(args.prompts, image_root=args.image_root)
    summary = train_rloo(args.model, args.rm, prompts, cfg, args.out, args.image_root, device=args.device,
                         progress=not args.quiet)
    io.write_json(Path(args.out) / "manifest.json", build_manifest(args.seed, " ".join(sys.argv), _params(args)))
    logger.info("RLOO: %d steps on %d prompts; model in %s", summary["steps"], summary["prompts"],
                Path(args.out) / "model")


def _train_online(args) -> None:
    from mmstudy.online import OnlineConfig, pair_source

    cfg = OnlineConfig(mode=args.mode, k=args.k, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                       p_offline=args.p_offline, regen_every=args.regen_every, seed=args.seed)
    sampler = None
    if args.sampler == "vllm":
        from mmstudy.sampling import make_sampler

        sampler = make_sampler("vllm", args.model, gpu_memory_utilization=args.vllm_memory)
    source = pair_source(cfg, args.image_root, args.world, args.judge, args.judge_cache, args.rho, args.iterations,
                         embedder=args.embedder, device=args.device, sampler=sampler)
    _run_trainer(args, args.prompts, source)


def _world_prefs(args) -> None:
    kinds = args.kind.split(",")
    if kinds != ["povid"]:
        _world_editions(args, kinds)
        return
    from mmstudy.world_prefs import povid_like_pairs

    mine_with = None
    if args.mine_with is not None:
        from mmstudy.model import load_llava

        model, processor = load_llava(args.mine_with)
        mine_with = (model.eval(), processor)
    pairs = povid_like_pairs(args.world, n=args.n, seed=args.seed, partner_share=args.partner_share,
                             fresh=args.fresh, mine_with=mine_with, progress=not args.quiet)
    io.write_jsonl(args.out, pairs)
    logger.info("wrote %d POVID-like pairs to %s", len(pairs), args.out)


def _world_editions(args, kinds: list[str]) -> None:
    from mmstudy import world_editions as we

    if "povid" in kinds:
        raise ValueError("world-prefs: build --kind povid on its own (it takes no responders)")
    if args.responder:
        responders = [we.parse_responder(s) for s in args.responder]
    elif args.model is not None:
        responders = we.default_responders(args.model)
    else:
        raise ValueError(f"world-prefs --kind {args.kind}: give --model MODEL_DIR or --responder NAME=...")
    pairs, rows = we.world_editions(kinds, args.world, responders, n=args.prompts, seed=args.seed,
                                    max_new_tokens=args.max_new_tokens, progress=not args.quiet)
    outs = {k: args.out if len(kinds) == 1 else args.out / f"{k}.jsonl" for k in kinds}
    for kind, out in outs.items():
        io.write_jsonl(out, pairs[kind])
        logger.info("wrote %d %s pairs to %s", len(pairs[kind]), kind, out)
    if args.rows_out is not None:
        for source, rated in rows.items():
            out = args.rows_out / f"{source}_vlfeedback.jsonl"
            io.write_jsonl(out, we.vlfeedback_rows(rated))
            logger.info("wrote %d rated rows (VLFeedback format) to %s", len(rated), out)


def _pope_build(args) -> None:
    from mmstudy.benchmarks.pope import SPLITS, build_pope_questions, load_coco_objects

    objects = load_coco_objects(args.coco_annotations)
    splits = build_pope_questions(objects, img_num=args.img_num, sample_num=args.sample_num, seed=args.seed,
                                  first_question_id=args.first_id)
    for split in SPLITS:
        io.write_jsonl(Path(args.out) / f"{args.prefix}_pope_{split}.json", splits[split])
    logger.info("wrote POPE splits (%s) to %s", ", ".join(f"{k}: {len(v)}" for k, v in splits.items()), args.out)


def _compare(args) -> None:
    from mmstudy.compare import compare_runs, comparison_table

    a, b = (io.read_jsonl(path, required=("benchmark",)) for path in (args.a, args.b))
    result = compare_runs(a, b, n_boot=args.n_boot, seed=args.seed)
    if not result:
        raise ValueError(f"{args.a} and {args.b} share no benchmark that can be compared item by item")
    if args.out is not None:
        io.write_json(args.out, result)
    print(comparison_table(result))  # noqa: T201 (the command's output)


def _convert(args) -> None:
    from mmstudy.converters import ConvertConfig, convert, write_result
    from mmstudy.preferences import subsample
    from mmstudy.runs import build_manifest

    cfg = ConvertConfig(image_root=args.image_root, on_missing="skip" if args.skip_missing_images else "error",
                        limit=args.limit, seed=args.seed, source=args.source)
    result = convert(args.dataset, args.input, cfg)
    if args.n is not None:
        result.records = subsample(result.records, args.n, args.seed, name=str(args.input))
    write_result(result, args.out)
    out = Path(args.out)
    params = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}
    io.write_json(out.with_name(out.stem + ".convert.json"),
                  {"stats": result.stats, "records": len(result.records), "kind": result.kind,
                   "manifest": build_manifest(args.seed, " ".join(sys.argv), params)})
    logger.info("wrote %d %s records to %s", len(result.records), result.kind, out)


def _prefs_mix(args) -> None:
    from mmstudy.preferences import load_preferences, mix, save_preferences, split

    sources = []
    for spec in args.inputs:
        path, _, n = spec.rpartition(":")
        if not (path and n.isdigit()):
            path, n = spec, None
        sources.append((path, load_preferences(path), None if n is None else int(n)))
    records = mix(sources, seed=args.seed)
    if args.val:
        if args.val_out is None:
            raise ValueError("--val needs --val-out")
        records, val = split(records, args.val, seed=args.seed)
        save_preferences(val, args.val_out)
        logger.info("wrote %d held-out pairs to %s", len(val), args.val_out)
    save_preferences(records, args.out)
    logger.info("wrote %d pairs to %s", len(records), args.out)


def _review(args) -> None:
    from mmstudy.preferences import load_preferences
    from mmstudy.review import load_tokenizer, review, review_file_names, save_review
    from mmstudy.runs import build_manifest

    names = args.names or [Path(p).stem for p in args.prefs]
    if len(names) != len(args.prefs):
        raise ValueError(f"--names gives {len(names)} names for {len(args.prefs)} preference files")
    review_file_names(names)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer is not None else None
    embedder = None
    if args.embed or args.embedder is not None:
        from mmstudy.bdhs import SentenceEmbedder

        embedder = SentenceEmbedder(args.embedder)
    result = review({n: load_preferences(p) for n, p in zip(names, args.prefs)}, tokenizer=tokenizer,
                    embedder=embedder, objects=args.objects, top=args.top)
    params = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}
    params["prefs"] = [str(p) for p in args.prefs]
    save_review(result, args.out, build_manifest(None, " ".join(sys.argv), params))
    logger.info("reviewed %s (%s pairs; lengths in %s) into %s", ", ".join(names),
                ", ".join(str(r["pairs"]) for r in result["counts"]), result["unit"], args.out)


def _execute(args) -> None:
    import yaml

    from mmstudy.notebooks import execute, load_params

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    metrics = execute(args.notebook, load_params(*args.params, **overrides), args.run_dir, force=args.force,
                      progress=not args.quiet)
    logger.info("%s: %d metrics in %s", args.notebook.name, len(metrics), Path(args.run_dir) / "metrics.json")


def _number_list(text: str, flag: str, kind=int) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated {kind.__name__} values") from None


def _run(args) -> None:
    from mmstudy.pipeline import run_pipeline

    seeds = _number_list(args.seeds, "--seeds")
    ablation_seeds = _number_list(args.ablation_seeds, "--ablation-seeds") if args.ablation_seeds else None
    results = run_pipeline(args.profile, seeds, args.runs, args.run_id, args.only, ablation_seeds,
                           progress=not args.quiet, shared_data=args.data_draws == "shared")
    logger.info("ran %d stage executions into %s", len(results), args.runs / (args.run_id or args.profile))


def _recipe_grid(args) -> None:
    import pandas as pd

    from mmstudy.plots import recipe_figure
    from mmstudy.preferences import load_preferences
    from mmstudy.recipe import RecipeGrid, choose_recipe, grid_report, point_name, run_grid
    from mmstudy.runs import build_manifest

    grid = RecipeGrid(lr=tuple(_number_list(args.lr, "--lr", float)),
                      epochs=tuple(_number_list(args.epochs, "--epochs")),
                      beta=tuple(_number_list(args.beta, "--beta", float)),
                      max_pairs=tuple(_number_list(args.pairs, "--pairs")),
                      selection_images=args.selection_images, tolerance=args.tolerance)
    pairs = load_preferences(args.prefs, image_root=args.base_run / "world" / "images")
    rows, base = run_grid(args.base_run, pairs, grid, args.out, seed=args.seed, device=args.device,
                          progress=not args.quiet)
    chosen = choose_recipe(rows, base, grid.tolerance)
    report = grid_report(rows, base, grid, chosen)
    report["manifest"] = build_manifest(args.seed, " ".join(sys.argv), _params(args))
    io.write_json(args.out / "grid.json", report)
    table = pd.DataFrame([{"name": point_name(r), **r} for r in rows] + [{"name": "base", **base}])
    io.write_text(args.out / "grid.csv", table.iloc[[-1, *range(len(rows))]].to_csv(index=False))
    with io.atomic_path(args.out / "grid.png") as tmp:
        recipe_figure(rows, base, chosen, grid.tolerance).savefig(tmp, dpi=120, format="png")
    if chosen is None:
        logger.warning("no grid point keeps recall and POPE F1 within %.3f of the base: nothing chosen "
                       "(see %s)", grid.tolerance, args.out / "grid.csv")
    else:
        logger.info("chosen: %s (CHAIR_i %.4f vs base %.4f, recall %.4f vs %.4f)",
                    {k: chosen[k] for k in ("lr", "epochs", "beta", "max_pairs")}, chosen["chair_i"],
                    base["chair_i"], chosen["recall"], base["recall"])


def _app(args) -> None:
    from mmstudy.app import build_demo, launch

    logger.info("inspecting %s (world: %s)", args.runs, args.world or "looked for under the runs directory")
    launch(build_demo(args.runs, args.world, args.coco, args.device), args.host, args.port)


def _add_trainer_args(p) -> None:
    """The options train-dpo and train-online share: model, output, objective, what trains, schedule."""
    p.add_argument("--model", required=True, type=Path, help="local LLaVA / LLaVA-NeXT checkpoint directory")
    p.add_argument("--image-root", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="run directory: metrics.jsonl, checkpoints/, model/")
    p.add_argument("--loss", default="dpo", choices=["dpo", "ipo", "slic", "avg_dpo"])
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--gamma", type=float, default=0.5, help="Avg-DPO weight of 'rejected' against 'rejected_2'")
    p.add_argument("--lora-r", type=int, default=128, help="0: full fine-tuning")
    p.add_argument("--lora-alpha", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--projector-lr", type=float, default=2e-5)
    p.add_argument("--freeze-projector", action="store_true")
    p.add_argument("--freeze-lm", action="store_true")
    p.add_argument("--train-vision", action="store_true")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--on-too-long", default="error", choices=["error", "skip"])
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--adapter-only", action="store_true", help="save the LoRA adapter instead of merged weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmstudy", description=__doc__.split("\n")[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads for this command and the notebooks it runs (default: "
                             "OMP_NUM_THREADS, else the cores this process may use; see docs/study.md)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("world", help="generate the synthetic world (images + text in the real formats)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--profile", default="default", choices=["smoke", "default"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a WorldSpec field, VALUE read as YAML (e.g. p_drift=0.6, faint_alpha=[0.5,0.85])")
    p.add_argument("--benchmarks-only", action="store_true",
                   help="(re)write only the benchmark editions (mmhal/, llava_bench/, amber/, objhal/) of the "
                        "existing world in --out")
    p.set_defaults(func=_world)

    p = sub.add_parser("train-base", help="staged training of the tiny world LLaVA from scratch")
    p.add_argument("--world", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="model directory (Hugging Face format)")
    p.add_argument("--profile", default="default", choices=["smoke", "default"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a BaseTrainConfig field, VALUE read as YAML (e.g. instruct.steps=3000, p_blind=0.2)")
    p.set_defaults(func=_train_base)

    p = sub.add_parser("eval", help="run hallucination benchmarks on a LLaVA model")
    p.add_argument("--model", required=True, type=Path, help="local LLaVA / LLaVA-NeXT checkpoint directory")
    p.add_argument("--data", "--world", dest="data", required=True, type=Path,
                   help="data directory: a world, or real releases in the same layout (see docs/benchmarks.md)")
    p.add_argument("--benchmarks", default="pope,chair",
                   help="comma list of: pope, chair, objhal, amber, mmhal, mmhal_v, llava_w, masked")
    p.add_argument("--judge", default=None,
                   help="for mmhal, mmhal_v, llava_w: oracle[:ERROR_RATE], local:MODEL_DIR or http:URL#MODEL")
    p.add_argument("--judge-cache", type=Path, default=None, help="on-disk cache of an http judge's replies")
    p.add_argument("--objhal-extractor", default="rule", choices=["rule", "judge"],
                   help="Object HalBench object extraction: CHAIR's rules, or the judge with RLAIF-V's prompt")
    p.add_argument("--out", required=True, type=Path, help="results.json path; samples.jsonl goes beside it")
    p.add_argument("--limit", type=int, default=None, help="first N items of each benchmark (default: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="torch device of the model (and of a local judge): cpu, cuda, ...")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="load the weights in this dtype (default: as saved)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_eval)

    p = sub.add_parser("score", help="score an existing answers file (any system's), without a model")
    bench = p.add_subparsers(dest="benchmark", required=True)
    b = bench.add_parser("pope", help="POPE: a question file and LLaVA-style answers (question_id, text)")
    b.add_argument("--questions", required=True, type=Path, help="POPE JSON-lines question file")
    b.add_argument("--answers", required=True, type=Path, help="JSON lines with question_id and text")
    b.add_argument("--parser", default="reference", choices=["reference", "strict"])
    b = bench.add_parser("chair", help="CHAIR: captions [{image_id, caption}] and COCO annotations")
    b.add_argument("--captions", required=True, type=Path, help="JSON list of {image_id, caption}")
    b.add_argument("--coco-annotations", required=True, type=Path, help="dir with instances_*.json, captions_*.json")
    b.add_argument("--synonyms", type=Path, default=None, help="synonym list (default: COCO's, as CHAIR ships it)")
    b.add_argument("--fixed", action="store_true", help="fixed synonym handling instead of the reference's")
    b = bench.add_parser("objhal", help="Object HalBench: RLAIF-V answers (JSON lines) and COCO annotations")
    b.add_argument("--answers", required=True, type=Path, help="JSON lines with image_id (or --questions), text")
    b.add_argument("--coco-annotations", required=True, type=Path, help="dir with instances_*.json, captions_*.json")
    b.add_argument("--questions", type=Path, default=None, help="obj_halbench_300_with_image.jsonl (for image_id)")
    b.add_argument("--synonyms", type=Path, default=None, help="synonym list (default: RLAIF-V's refined COCO list)")
    b = bench.add_parser("amber", help="AMBER: responses [{id, response}] against the released data directory")
    b.add_argument("--responses", required=True, type=Path, help="JSON list of {id, response}")
    b.add_argument("--data", required=True, type=Path, help="dir with annotations.json, relation.json, safe_words.txt")
    b.add_argument("--parser", default="reference", choices=["reference", "first_word"])
    b = bench.add_parser("mmhal", help="MMHal(-V): a filled-in response_template.json, rated by a judge")
    b.add_argument("--responses", required=True, type=Path, help="MMHal items with model_answer")
    b.add_argument("--judge", required=True, help="oracle[:ERROR_RATE] (needs --world), local:DIR, http:URL#MODEL")
    b.add_argument("--judge-cache", type=Path, default=None)
    b.add_argument("--images", type=Path, default=None, help="image directory (needed for --with-image)")
    b.add_argument("--with-image", action="store_true", help="MMHal-V: attach the image for the judge")
    b.add_argument("--world", type=Path, default=None, help="world directory: ground truth for the oracle judge")
    b = bench.add_parser("llava_w", help="LLaVA-Bench: re-score a review file written by LLaVA's GPT-4 review")
    b.add_argument("--reviews", required=True, type=Path, help="JSON lines with category, content, ...")
    b.add_argument("--mode", default="strict", choices=["strict", "reference"])
    for b in bench.choices.values():
        b.add_argument("--out", type=Path, default=None, help="write the metrics here instead of stdout")
    p.set_defaults(func=_score)

    p = sub.add_parser("bdhs", help="BDHS: rejected responses from the model with its image attention masked")
    p.add_argument("--model", required=True, type=Path, help="local LLaVA / LLaVA-NeXT checkpoint directory")
    p.add_argument("--sft", required=True, type=Path, help="LLaVA-Instruct JSON: prompts, images and y+")
    p.add_argument("--image-root", required=True, type=Path, help="directory the records' images are relative to")
    p.add_argument("--out", required=True, type=Path, help="preference JSON lines (rerun to resume); "
                   "statistics go to <out stem>.stats.json")
    p.add_argument("--n", type=int, default=None, help="a seeded random subset of N examples (default: all)")
    p.add_argument("--variant", default="attn", choices=["attn", "noise", "unguided", "povid"])
    p.add_argument("--rho", type=float, default=0.99, help="masking threshold rho_th (keep token iff u >= rho)")
    p.add_argument("--iterations", type=int, default=5, help="N_BDHS; the last one is unguided when > 1")
    p.add_argument("--epsilon", type=float, default=0.97, help="accept when cosine(y-, y+) < epsilon")
    p.add_argument("--noise-steps", type=int, default=500, help="diffusion steps (noise and povid variants)")
    p.add_argument("--max-sentence-tokens", type=int, default=48)
    p.add_argument("--embedder", type=Path, default=None,
                   help="sentence-transformers directory (default: the packaged all-MiniLM-L6-v2; the paper used "
                        "all-mpnet-base-v2)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world", type=Path, default=None,
                   help="world directory: also check the rejected responses against its ground truth")
    p.set_defaults(func=_bdhs)

    p = sub.add_parser("train-dpo", help="offline preference training: DPO, IPO, SLiC or Avg-DPO, LoRA or full")
    p.add_argument("--prefs", required=True, type=Path, help="preference JSON lines (mmstudy's schema)")
    p.add_argument("--precompute-ref", action="store_true", help="reference log-probs once per dataset")
    _add_trainer_args(p)
    p.set_defaults(func=_train_dpo)

    p = sub.add_parser("train-rm", help="a Bradley-Terry reward model (LLaVA backbone + scalar head) on preference "
                       "pairs, and its accuracy on held-out pairs (the paper's Table 7)")
    p.add_argument("--model", required=True, type=Path, help="local LLaVA / LLaVA-NeXT checkpoint: the backbone")
    p.add_argument("--prefs", required=True, type=Path, help="training pairs (.jsonl, .parquet, Arrow folder)")
    p.add_argument("--image-root", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="run directory: rm/, metrics.jsonl, checkpoints/, "
                   "accuracy.json, manifest.json")
    p.add_argument("--eval-prefs", nargs="+", type=Path, default=[], help="held-out pair files: accuracy per file "
                   "and per source, written to accuracy.json")
    p.add_argument("--eval-image-root", type=Path, default=None, help="image root of --eval-prefs (default: "
                   "--image-root)")
    p.add_argument("--lora-r", type=int, default=128, help="0: full fine-tuning of the language model")
    p.add_argument("--lora-alpha", type=int, default=256)
    p.add_argument("--train-projector", action="store_true")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--schedule", default="constant", choices=["constant", "linear"])
    p.add_argument("--warmup-ratio", type=float, default=0.03)
    p.add_argument("--center", type=float, default=0.0, help="reward-centering coefficient (0.01 is usual)")
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--on-too-long", default="error", choices=["error", "skip"])
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_rm)

    p = sub.add_parser("eval-rm", help="pairwise accuracy of a reward model on held-out pairs, per source")
    p.add_argument("--rm", required=True, type=Path, help="reward-model directory (train-rm's RUN_DIR/rm)")
    p.add_argument("--prefs", required=True, nargs="+", type=Path, help="held-out pair files")
    p.add_argument("--image-root", required=True, type=Path)
    p.add_argument("--out", type=Path, default=None, help="also write the accuracies as JSON")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    p.set_defaults(func=_eval_rm)

    p = sub.add_parser("train-rloo", help="RLOO against a reward model: k samples per prompt, leave-one-out "
                       "baseline, KL penalty, LoRA")
    p.add_argument("--model", required=True, type=Path, help="local LLaVA / LLaVA-NeXT checkpoint: the policy")
    p.add_argument("--rm", required=True, type=Path, help="reward-model directory (train-rm's RUN_DIR/rm)")
    p.add_argument("--prompts", required=True, type=Path, help="preference or sft file: prompts and images")
    p.add_argument("--image-root", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="run directory: model/, metrics.jsonl, samples.jsonl, "
                   "checkpoints/, manifest.json")
    p.add_argument("--k", type=int, default=4, help="samples per prompt")
    p.add_argument("--beta", type=float, default=0.05, help="KL coefficient (the paper: 0.4)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--normalize", default="dataset", choices=["dataset", "batch", "none"],
                   help="reward normalization: RM statistics of the prompt file's responses (the paper), per batch, "
                        "or none")
    p.add_argument("--lora-r", type=int, default=128)
    p.add_argument("--lora-alpha", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per step")
    p.add_argument("--micro-batch", type=int, default=0, help="prompts per forward/backward pass (0: the batch)")
    p.add_argument("--log-samples-every", type=int, default=10, help="write every sample of every N-th step")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--adapter-only", action="store_true", help="save the LoRA adapter instead of merged weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_rloo)

    p = sub.add_parser("train-online", help="Online-DPO with a judge, Mixed-DPO or Online-BDHS (the same trainer)")
    p.add_argument("--prompts", required=True, type=Path,
                   help="preference file whose prompts and images are sampled (its pairs: the offline data)")
    p.add_argument("--mode", default="online_dpo", choices=["online_dpo", "mixed", "online_bdhs", "online_bdhs_avg"])
    p.add_argument("--judge", default="oracle", help="oracle[:ERROR_RATE], local:MODEL_DIR or http:URL#MODEL")
    p.add_argument("--judge-cache", type=Path, default=None, help="cache of HTTP judge replies")
    p.add_argument("--world", type=Path, default=None,
                   help="world directory: ground truth for the oracle judge and the judge-agreement metric")
    p.add_argument("--k", type=int, default=2, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--p-offline", type=float, default=0.5, help="mixed: chance of the offline pair per example")
    p.add_argument("--regen-every", type=int, default=1, help="online BDHS: regenerate rejected this often (steps)")
    p.add_argument("--rho", type=float, default=0.99, help="online BDHS masking threshold")
    p.add_argument("--iterations", type=int, default=5, help="online BDHS iterations N_BDHS")
    p.add_argument("--embedder", type=Path, default=None, help="online BDHS sentence embedder directory")
    p.add_argument("--sampler", default="hf", choices=["hf", "vllm"],
                   help="online_dpo / mixed sampling backend: Hugging Face generate, or vLLM (GPU, optional install)")
    p.add_argument("--vllm-memory", type=float, default=0.3,
                   help="vllm sampler: share of GPU memory for the engine (vLLM's gpu_memory_utilization)")
    _add_trainer_args(p)
    p.set_defaults(func=_train_online)

    p = sub.add_parser("world-prefs", help="world editions of preference datasets (POVID-like, ranking, correction, "
                                           "Table 4 variants)")
    p.add_argument("--world", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path,
                   help="preference JSON lines; with several --kind values, a directory of <kind>.jsonl")
    p.add_argument("--kind", default="povid",
                   help="povid, or a comma-separated list of: ranking, correction, ranked_corrupted, sft_prompts, "
                        "reference_chosen, model_chosen (mmstudy.world_editions)")
    p.add_argument("--n", type=int, default=None, help="number of pairs (default: every record that admits one)")
    p.add_argument("--partner-share", type=float, default=0.25,
                   help="share of balanced yes/no pairs about absent co-occurring partners and present objects")
    p.add_argument("--fresh", type=int, default=0,
                   help="build the pairs on this many new scenes (rendered into the world) instead of the SFT data")
    p.add_argument("--mine-with", type=Path, default=None, metavar="MODEL_DIR",
                   help="keep only the pairs whose prompt this model answers wrongly (by the oracle), existence "
                        "pairs balanced by answer")
    p.add_argument("--model", type=Path, default=None, metavar="MODEL_DIR",
                   help="sampled editions: the checkpoint behind the default responders (reference, T 0.7, T 1.3, "
                        "T 0.7 with 90%% of the image tokens masked)")
    p.add_argument("--responder", action="append", default=[], metavar="NAME=SOURCE",
                   help="sampled editions, repeatable: NAME=reference or NAME=MODEL_DIR[,t=T][,rho=RHO_TH]")
    p.add_argument("--prompts", type=int, default=1000, help="sampled editions: prompts per prompt source")
    p.add_argument("--max-new-tokens", type=int, default=96, help="sampled editions: completion budget")
    p.add_argument("--rows-out", type=Path, default=None, metavar="DIR",
                   help="sampled editions: also write the rated completions in VLFeedback's format here")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_world_prefs)

    p = sub.add_parser("pope-build", help="build POPE's three splits from COCO instance annotations")
    p.add_argument("--coco-annotations", required=True, type=Path, help="e.g. instances_val2014.json")
    p.add_argument("--out", required=True, type=Path, help="output directory for <prefix>_pope_<split>.json")
    p.add_argument("--prefix", default="coco")
    p.add_argument("--img-num", type=int, default=500)
    p.add_argument("--sample-num", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first-id", type=int, default=1, help="first question_id (the released files start at 0)")
    p.set_defaults(func=_pope_build)

    p = sub.add_parser("compare", help="paired comparison of two runs' samples.jsonl on the same items (B - A)")
    p.add_argument("a", type=Path, help="samples.jsonl of run A (e.g. the base model)")
    p.add_argument("b", type=Path, help="samples.jsonl of run B (e.g. the aligned model)")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the comparison as JSON")
    p.set_defaults(func=_compare)

    p = sub.add_parser("convert", help="a released preference dataset (or LLaVA-Instruct) -> mmstudy's schema")
    p.add_argument("dataset", choices=["llava_instruct", "povid", "rlhf_v", "vlfeedback", "rlaif_v", "ha_dpo", "trl"])
    p.add_argument("--input", required=True, type=Path, help="the released file (docs/preference-data.md)")
    p.add_argument("--image-root", required=True, type=Path,
                   help="folder the records' images are relative to; embedded images are written here")
    p.add_argument("--out", required=True, type=Path,
                   help="PREFS.jsonl, PREFS.parquet or an Arrow folder; statistics go to <out stem>.convert.json")
    p.add_argument("--skip-missing-images", action="store_true", help="skip (and count) records whose image is "
                   "missing instead of stopping")
    p.add_argument("--limit", type=int, default=None, help="stop after N converted records")
    p.add_argument("--n", type=int, default=None, help="then keep a seeded random subset of N (the paper's 5k)")
    p.add_argument("--source", default=None, help="source name written into the records (default: the dataset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of VLFeedback / HA-DPO picks")
    p.set_defaults(func=_convert)

    p = sub.add_parser("prefs-mix", help="seeded subsample, mix and split of preference files")
    p.add_argument("inputs", nargs="+", help="PREFS[:N]: a preference file (.jsonl, .parquet, Arrow folder), "
                   "optionally with a seeded subsample size")
    p.add_argument("--out", required=True, type=Path, help=".jsonl, .parquet or an Arrow folder")
    p.add_argument("--val", type=int, default=0, help="hold out a seeded random N pairs of the mix")
    p.add_argument("--val-out", type=Path, default=None, help="where the held-out pairs go")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_prefs_mix)

    p = sub.add_parser("review", help="data review of preference files: lengths, similarity, kinds of difference, "
                       "objects, Table 1, figures")
    p.add_argument("prefs", nargs="+", type=Path, help="preference files (.jsonl, .parquet, Arrow folder)")
    p.add_argument("--out", required=True, type=Path, help="folder for review.json, pairs.jsonl, table1.md, "
                   "<name>.md and the PNG figures")
    p.add_argument("--names", nargs="+", default=None, help="dataset names, one per file (default: file stems)")
    p.add_argument("--tokenizer", type=Path, default=None, metavar="MODEL_DIR",
                   help="count lengths in this model's tokens (default: whitespace words)")
    p.add_argument("--embed", action="store_true", help="also the cosine similarity of sentence embeddings "
                   "(packaged all-MiniLM-L6-v2; slower)")
    p.add_argument("--embedder", type=Path, default=None, help="sentence-transformers directory (implies --embed)")
    p.add_argument("--objects", default="auto", choices=["auto", "world", "coco"],
                   help="object noun list: the world's classes, CHAIR's COCO synonyms, or chosen per dataset")
    p.add_argument("--top", type=int, default=10, help="objects listed in the top-object tables")
    p.set_defaults(func=_review)

    p = sub.add_parser("execute", help="execute one parameterized notebook into a run directory (papermill)")
    p.add_argument("notebook", type=Path, help="e.g. notebooks/04_data_review.ipynb")
    p.add_argument("--params", nargs="*", type=Path, default=[], help="flat YAML params files, merged in order")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter (the value is read as YAML: 3, 0.5, [a, b], text)")
    p.add_argument("--run-dir", required=True, type=Path, help="where the executed notebook and outputs go")
    p.add_argument("--force", action="store_true", help="rerun a complete run directory with other params")
    p.set_defaults(func=_execute)

    p = sub.add_parser("run", help="run the study's notebook chain into runs/<run id>/<stage>/ (papermill)")
    p.add_argument("--profile", required=True, choices=["smoke", "default", "paper"],
                   help="params/<profile>/ over params/: smoke (CI), default (2 CPU cores), paper (GPUs)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of the per-seed stages (e.g. 0,1,2)")
    p.add_argument("--only", nargs="*", default=[], metavar="STAGE",
                   help="run only these stages (07_ablations runs only when named here)")
    p.add_argument("--ablation-seeds", default="", help="seeds of the ablation sweep (default: the first seed)")
    p.add_argument("--data-draws", choices=["shared", "per-seed"], default="shared",
                   help="shared (default): the preference data is built once, with the first seed, and every seed "
                        "trains on it (seeds differ in training alone, as the paper has one dataset per method); "
                        "per-seed: each seed draws its own data (claims hold over draws of the data, with less "
                        "power). A run id keeps the setting it was made with")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="runs directory")
    p.add_argument("--run-id", default=None, help="run id (default: the profile's name)")
    p.set_defaults(func=_run)

    p = sub.add_parser("recipe-grid", help="choose the alignment recipe: DPO on the positive control's pairs over a "
                       "grid, scored on a selection split of new scenes (docs/alignment.md)")
    p.add_argument("--base-run", required=True, type=Path, help="a run directory with world/ and model/ "
                   "(runs/<id>/01_world_base)")
    p.add_argument("--prefs", required=True, type=Path, help="the oracle pairs (02_preference_data's oracle.jsonl)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--lr", default="5e-5,1e-4,2e-4")
    p.add_argument("--epochs", default="2,4")
    p.add_argument("--beta", default="0.1")
    p.add_argument("--pairs", default="768,1024", help="the file's first N pairs; 0: all")
    p.add_argument("--selection-images", type=int, default=500)
    p.add_argument("--tolerance", type=float, default=0.01, help="recall and POPE F1 may fall this much")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_recipe_grid)

    p = sub.add_parser("app", help="the Gradio inspector: preference pairs, live generation with masking, run "
                       "comparison and benchmark samples, over a runs directory")
    p.add_argument("--runs", required=True, type=Path, help="directory searched for preference files, evaluations "
                   "(results.json + samples.jsonl) and model directories")
    p.add_argument("--world", type=Path, default=None, help="world directory for images and ground truth "
                   "(default: one found under --runs)")
    p.add_argument("--coco", type=Path, default=None, help="COCO annotations (instances_*.json, captions_*.json): "
                   "ground truth for COCO images")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: local only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="cpu", help="device for the Live tab's models")
    p.set_defaults(func=_app)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from mmstudy.runs import use_cpu_threads

    try:
        use_cpu_threads(args.threads)
        args.func(args)
    except (io.DataError, FileExistsError, ValueError) as e:
        logger.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
