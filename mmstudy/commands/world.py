"""The world commands: generate a world, train its base model, world editions of preference data, POPE splits."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from mmstudy import io
from mmstudy.benchmarks.pope import SPLITS, build_pope_questions, load_coco_objects
from mmstudy.editions import sampled as we
from mmstudy.editions.povid import povid_like_pairs
from mmstudy.models.llava import load_llava
from mmstudy.study.settings import with_overrides
from mmstudy.study.stages import ensure_base_model
from mmstudy.world.benchmarks import write_benchmark_editions
from mmstudy.world.files import write_world
from mmstudy.world.scene import WorldSpec

logger = logging.getLogger("mmstudy")


def _world(args) -> None:
    if args.benchmarks_only:
        counts = write_benchmark_editions(args.out)
        logger.info("wrote benchmark editions into %s: %s", args.out, counts)
        return

    spec = with_overrides(WorldSpec.for_profile(args.profile), args.set)
    summary = write_world(args.out, spec, seed=args.seed, overwrite=args.overwrite, progress=not args.quiet)
    logger.info("wrote world to %s: %s", args.out, summary["counts"])


def _train_base(args) -> None:
    report = ensure_base_model(args.world, args.out, args.profile, args.seed, progress=not args.quiet,
                               command=" ".join(sys.argv), overrides=args.set)
    logger.info("base model in %s (%.0f s of training)", args.out, report.get("seconds") or 0)


def _world_prefs(args) -> None:
    kinds = args.kind.split(",")
    if kinds != ["povid"]:
        _world_editions(args, kinds)
        return

    mine_with = None
    if args.mine_with is not None:
        model, processor = load_llava(args.mine_with)
        mine_with = (model.eval(), processor)
    pairs = povid_like_pairs(args.world, n=args.n, seed=args.seed, partner_share=args.partner_share,
                             fresh=args.fresh, mine_with=mine_with, progress=not args.quiet)
    io.write_jsonl(args.out, pairs)
    logger.info("wrote %d POVID-like pairs to %s", len(pairs), args.out)


def _world_editions(args, kinds: list[str]) -> None:
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
    objects = load_coco_objects(args.coco_annotations)
    splits = build_pope_questions(objects, img_num=args.img_num, sample_num=args.sample_num, seed=args.seed,
                                  first_question_id=args.first_id)
    for name in SPLITS:
        io.write_jsonl(Path(args.out) / f"{args.prefix}_pope_{name}.json", splits[name])
    logger.info("wrote POPE splits (%s) to %s", ", ".join(f"{k}: {len(v)}" for k, v in splits.items()), args.out)


def _parser_world(sub) -> None:
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


def _parser_train_base(sub) -> None:
    p = sub.add_parser("train-base", help="staged training of the tiny world LLaVA from scratch")
    p.add_argument("--world", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="model directory (Hugging Face format)")
    p.add_argument("--profile", default="default", choices=["smoke", "default"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a BaseTrainConfig field, VALUE read as YAML (e.g. instruct.steps=3000, p_blind=0.2)")
    p.set_defaults(func=_train_base)


def _parser_world_prefs(sub) -> None:
    p = sub.add_parser("world-prefs", help="world editions of preference datasets (POVID-like, ranking, correction, "
                                           "Table 4 variants)")
    p.add_argument("--world", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path,
                   help="preference JSON lines; with several --kind values, a directory of <kind>.jsonl")
    p.add_argument("--kind", default="povid",
                   help="povid, or a comma-separated list of: ranking, correction, ranked_corrupted, sft_prompts, "
                        "reference_chosen, model_chosen (mmstudy.editions.sampled)")
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


def _parser_pope_build(sub) -> None:
    p = sub.add_parser("pope-build", help="build POPE's three splits from COCO instance annotations")
    p.add_argument("--coco-annotations", required=True, type=Path, help="e.g. instances_val2014.json")
    p.add_argument("--out", required=True, type=Path, help="output directory for <prefix>_pope_<split>.json")
    p.add_argument("--prefix", default="coco")
    p.add_argument("--img-num", type=int, default=500)
    p.add_argument("--sample-num", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first-id", type=int, default=1, help="first question_id (the released files start at 0)")
    p.set_defaults(func=_pope_build)


def add_commands(sub) -> None:
    _parser_world(sub)
    _parser_train_base(sub)
    _parser_world_prefs(sub)
    _parser_pope_build(sub)
