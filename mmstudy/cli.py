"""The `mmstudy` command (also `python -m mmstudy`).

    mmstudy world --out world --profile default --seed 0
    mmstudy train-base --world world --out models/base --profile default
    mmstudy eval --model models/base --world world --benchmarks pope,chair,masked --out runs/base/results.json
    mmstudy score pope --questions world/pope/world_pope_random.json --answers answers.jsonl
    mmstudy score chair --captions captions.json --coco-annotations world/annotations --synonyms world/synonyms.txt
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

from mmstudy import io

logger = logging.getLogger("mmstudy")


def _world(args) -> None:
    from mmstudy.world import WorldSpec
    from mmstudy.world_files import write_world

    spec = WorldSpec.for_profile(args.profile)
    summary = write_world(args.out, spec, seed=args.seed, overwrite=args.overwrite, progress=not args.quiet)
    logger.info("wrote world to %s: %s", args.out, summary["counts"])


def _train_base(args) -> None:
    from mmstudy.base import BaseTrainConfig, train_base
    from mmstudy.model import save_llava
    from mmstudy.runs import build_manifest

    cfg = BaseTrainConfig.for_profile(args.profile, seed=args.seed)
    out = Path(args.out)
    ckpt = out.with_name(out.name + ".stages")
    if ckpt.is_dir():
        logger.info("found stage checkpoints in %s: resuming", ckpt)
    start = time.time()
    model, processor, report = train_base(args.world, cfg, checkpoint_dir=ckpt, progress=not args.quiet)
    report["seconds"] = round(time.time() - start, 1)
    save_llava(model, processor, out)
    manifest = build_manifest(cfg.seed, " ".join(sys.argv), {"world": str(args.world), "profile": args.profile})
    io.write_json(out / "mmstudy_train.json", {"manifest": manifest, **report})
    shutil.rmtree(ckpt, ignore_errors=True)
    logger.info("saved base model to %s (%.0f s of training)", out, report["seconds"])


def _eval(args) -> None:
    from mmstudy.evaluate import evaluate
    from mmstudy.model import load_llava
    from mmstudy.runs import build_manifest

    model, processor = load_llava(args.model)
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    metrics, samples = evaluate(model, processor, args.world, benchmarks, limit=args.limit,
                                batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
    out = Path(args.out)
    params = {"model": str(args.model), "world": str(args.world), "benchmarks": benchmarks, "limit": args.limit}
    io.write_jsonl(out.with_name("samples.jsonl"), samples)
    io.write_json(out, {"metrics": metrics, "manifest": build_manifest(args.seed, " ".join(sys.argv), params)})
    for key in sorted(metrics):
        if key.endswith(("accuracy", "f1", "yes_ratio", "chair_i", "chair_s", "recall", "share")):
            logger.info("%-50s %s", key, round(metrics[key], 4) if isinstance(metrics[key], float) else metrics[key])
    logger.info("wrote %s and %s", out, out.with_name("samples.jsonl"))


def _score(args) -> None:
    import json

    from mmstudy.evaluate import score_chair_file, score_pope_file

    if args.benchmark == "pope":
        metrics = score_pope_file(args.questions, args.answers, parser=args.parser)
    else:
        metrics = score_chair_file(args.captions, args.coco_annotations, args.synonyms, fixed=args.fixed)
    if args.out is not None:
        io.write_json(args.out, metrics)
        logger.info("wrote %s", args.out)
    else:
        print(json.dumps(metrics, indent=1, sort_keys=True))  # noqa: T201 (the command's output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmstudy", description=__doc__.split("\n")[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("world", help="generate the synthetic world (images + text in the real formats)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--profile", default="default", choices=["smoke", "default"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    p.set_defaults(func=_world)

    p = sub.add_parser("train-base", help="staged training of the tiny world LLaVA from scratch")
    p.add_argument("--world", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="model directory (Hugging Face format)")
    p.add_argument("--profile", default="default", choices=["smoke", "default"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_base)

    p = sub.add_parser("eval", help="run hallucination benchmarks on a LLaVA model")
    p.add_argument("--model", required=True, type=Path, help="local LLaVA / LLaVA-NeXT checkpoint directory")
    p.add_argument("--world", required=True, type=Path, help="world (or benchmark data) directory")
    p.add_argument("--benchmarks", default="pope,chair", help="comma list of: pope, chair, masked")
    p.add_argument("--out", required=True, type=Path, help="results.json path; samples.jsonl goes beside it")
    p.add_argument("--limit", type=int, default=None, help="first N items of each benchmark (default: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_eval)

    p = sub.add_parser("score", help="score an existing answers file (any system's), without a model")
    bench = p.add_subparsers(dest="benchmark", required=True)
    b = bench.add_parser("pope", help="POPE: a question file and LLaVA-style answers (question_id, text)")
    b.add_argument("--questions", required=True, type=Path, help="POPE JSON-lines question file")
    b.add_argument("--answers", required=True, type=Path, help="JSON lines with question_id and text")
    b.add_argument("--parser", default="reference", choices=["reference", "strict"])
    b.add_argument("--out", type=Path, default=None, help="write the metrics here instead of stdout")
    b = bench.add_parser("chair", help="CHAIR: captions [{image_id, caption}] and COCO annotations")
    b.add_argument("--captions", required=True, type=Path, help="JSON list of {image_id, caption}")
    b.add_argument("--coco-annotations", required=True, type=Path, help="dir with instances_*.json, captions_*.json")
    b.add_argument("--synonyms", type=Path, default=None, help="synonym list (default: COCO's, as CHAIR ships it)")
    b.add_argument("--fixed", action="store_true", help="fixed synonym handling instead of the reference's")
    b.add_argument("--out", type=Path, default=None, help="write the metrics here instead of stdout")
    p.set_defaults(func=_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        args.func(args)
    except (io.DataError, FileExistsError, ValueError) as e:
        logger.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
