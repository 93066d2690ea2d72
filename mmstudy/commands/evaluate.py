"""The evaluation commands: run benchmarks on a model, score existing answer files, compare two runs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mmstudy import io
from mmstudy.benchmarks.amber import score_amber_files
from mmstudy.benchmarks.llava_bench import load_reviews, score_reviews
from mmstudy.benchmarks.registry import REGISTRY
from mmstudy.commands.common import add_judge_limits, judge_limits, manifest_of
from mmstudy.evaluation.compare import compare_runs, comparison_table
from mmstudy.evaluation.evaluate import evaluate, summary_table
from mmstudy.evaluation.files import score_chair_file, score_mmhal_file, score_objhal_file, score_pope_file
from mmstudy.judges.base import check_judge_calls
from mmstudy.judges.registry import make_judge
from mmstudy.models.decoding import parse_decoding
from mmstudy.models.llava import load_llava

logger = logging.getLogger("mmstudy")


def _judge(args, seed: int = 0, device: str = "cpu"):
    return make_judge(args.judge, seed=seed, cache_dir=args.judge_cache, device=device,
                      http_options=judge_limits(args))


def _decoding(text: str):
    try:
        return parse_decoding(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _eval(args) -> str:
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    judge = _judge(args, seed=args.seed, device=args.device) if args.judge else None
    model, processor = load_llava(args.model, device=args.device, dtype=args.dtype)
    metrics, samples = evaluate(model, processor, args.data, benchmarks, judge=judge, limit=args.limit,
                                batch_size=args.batch_size, seed=args.seed, objhal_extractor=args.objhal_extractor,
                                decoding=args.decoding, progress=not args.quiet)
    out = Path(args.out)
    params = {"model": str(args.model), "data": str(args.data), "benchmarks": benchmarks, "limit": args.limit,
              "judge": args.judge, "batch_size": args.batch_size, "objhal_extractor": args.objhal_extractor,
              "device": args.device, "dtype": args.dtype, "decoding": str(args.decoding)}
    io.write_jsonl(out.with_name("samples.jsonl"), samples)
    io.write_json(out, {"metrics": metrics, "manifest": manifest_of(args, params)})
    logger.info("wrote %s and %s", out, out.with_name("samples.jsonl"))
    check_judge_calls(judge)
    return summary_table(metrics)


def _score(args) -> str | None:
    if args.benchmark == "pope":
        metrics = score_pope_file(args.questions, args.answers, parser=args.parser)
    elif args.benchmark == "chair":
        metrics = score_chair_file(args.captions, args.coco_annotations, args.synonyms, fixed=args.fixed)
    elif args.benchmark == "objhal":
        metrics = score_objhal_file(args.answers, args.coco_annotations, args.questions, args.synonyms)
    elif args.benchmark == "amber":
        metrics, _ = score_amber_files(args.responses, args.data, parser=args.parser)
    elif args.benchmark == "mmhal":
        judge = _judge(args)
        metrics = score_mmhal_file(args.responses, judge, args.images, args.world, with_image=args.with_image)
        check_judge_calls(judge)
    else:
        metrics = score_reviews(load_reviews(args.reviews), mode=args.mode)
    if args.out is not None:
        io.write_json(args.out, metrics)
        logger.info("wrote %s", args.out)
        return None
    return io.dumps_json(metrics).rstrip("\n")


def _compare(args) -> str:
    a, b = (io.read_jsonl(path, required=("benchmark",)) for path in (args.a, args.b))
    result = compare_runs(a, b, n_boot=args.n_boot, seed=args.seed)
    if not result:
        raise ValueError(f"{args.a} and {args.b} share no benchmark that can be compared item by item")
    if args.out is not None:
        io.write_json(args.out, result)
    return comparison_table(result)


def _parser_eval(sub) -> None:
    p = sub.add_parser("eval", help="run hallucination benchmarks on a LLaVA model")
    p.add_argument("--model", required=True, type=Path, help="local LLaVA / LLaVA-NeXT checkpoint directory")
    p.add_argument("--data", "--world", dest="data", required=True, type=Path,
                   help="data directory: a world, or real releases in the same layout (see docs/benchmarks.md)")
    p.add_argument("--benchmarks", default="pope,chair",
                   help=f"comma list of: {', '.join(REGISTRY)}")
    p.add_argument("--judge", default=None,
                   help="for mmhal, mmhal_v, llava_w: oracle[:ERROR_RATE], local:MODEL_DIR or http:URL#MODEL")
    p.add_argument("--judge-cache", type=Path, default=None, help="on-disk cache of an http judge's replies")
    add_judge_limits(p)
    p.add_argument("--objhal-extractor", default="rule", choices=["rule", "judge"],
                   help="Object HalBench object extraction: CHAIR's rules, or the judge with RLAIF-V's prompt")
    p.add_argument("--out", required=True, type=Path, help="results.json path; samples.jsonl goes beside it")
    p.add_argument("--limit", type=int, default=None, help="first N items of each benchmark (default: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="torch device of the model (and of a local judge): cpu, cuda, ...")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="load the weights in this dtype (default: as saved)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decoding", type=_decoding, default="greedy", metavar="METHOD[:K=V,...]",
                   help="greedy (default), vcd[:alpha=1,beta=0.1,noise_steps=500] (visual contrastive decoding) or "
                        "pai[:alpha=0.2,gamma=1.1,beta=0.1,start_layer=2] (attention boosting); docs/decoding.md")
    p.set_defaults(func=_eval)


def _parser_score(sub) -> None:
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
    add_judge_limits(b)
    b.add_argument("--images", type=Path, default=None, help="image directory (needed for --with-image)")
    b.add_argument("--with-image", action="store_true", help="MMHal-V: attach the image for the judge")
    b.add_argument("--world", type=Path, default=None, help="world directory: ground truth for the oracle judge")
    b = bench.add_parser("llava_w", help="LLaVA-Bench: re-score a review file written by LLaVA's GPT-4 review")
    b.add_argument("--reviews", required=True, type=Path, help="JSON lines with category, content, ...")
    b.add_argument("--mode", default="strict", choices=["strict", "reference"])
    for b in bench.choices.values():
        b.add_argument("--out", type=Path, default=None, help="write the metrics here instead of stdout")
    p.set_defaults(func=_score)


def _parser_compare(sub) -> None:
    p = sub.add_parser("compare", help="paired comparison of two runs' samples.jsonl on the same items (B - A)")
    p.add_argument("a", type=Path, help="samples.jsonl of run A (e.g. the base model)")
    p.add_argument("b", type=Path, help="samples.jsonl of run B (e.g. the aligned model)")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the comparison as JSON")
    p.set_defaults(func=_compare)


def add_commands(sub) -> None:
    _parser_eval(sub)
    _parser_score(sub)
    _parser_compare(sub)
