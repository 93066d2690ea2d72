"""The data commands: BDHS generation, converters of released datasets, mixing and the data review."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from mmstudy import io
from mmstudy.commands.common import manifest_of, params_of
from mmstudy.converters import ConvertConfig, convert, write_result
from mmstudy.data.bdhs import BDHSConfig, ImageLoader, SentenceEmbedder, load_examples, run_bdhs
from mmstudy.data.preferences import load_preferences, mix, save_preferences, split, subsample
from mmstudy.data.review import load_tokenizer, review, review_file_names, save_review
from mmstudy.judges.oracle import pair_report
from mmstudy.models.llava import load_llava
from mmstudy.plots import bdhs_figure
from mmstudy.runs import build_manifest
from mmstudy.world.layout import load_scenes, load_world_info

logger = logging.getLogger("mmstudy")


def _bdhs(args) -> None:
    cfg = BDHSConfig(variant=args.variant, rho_th=args.rho, iterations=args.iterations, epsilon=args.epsilon,
                     noise_steps=args.noise_steps, max_sentence_tokens=args.max_sentence_tokens, seed=args.seed)
    examples = load_examples(args.sft, args.image_root, n=args.n, seed=args.seed)
    model, processor = load_llava(args.model, device=args.device)
    embedder = SentenceEmbedder(args.embedder, device=args.device)
    provenance = {"model": str(args.model), "model_revision": io.fingerprint(args.model), "embedder": embedder.name}
    stats = run_bdhs(model, processor, examples, cfg, embedder, ImageLoader(args.image_root), args.out, provenance,
                     batch_size=args.batch_size, progress=not args.quiet)
    out = Path(args.out)
    if args.world is not None:
        scenes = {f"{s.image_id}.png": s for s in load_scenes(args.world)}
        wanted = {ex.id for ex in examples}
        stats["world"] = pair_report([r for r in io.read_jsonl(out) if r["id"] in wanted], scenes,
                                     load_world_info(args.world)["cooccurrence"]["p_given"])
        logger.info("against the world's ground truth: %s", {k: v for k, v in stats["world"].items()
                                                              if k != "top_hallucinated"})
    params = params_of(args)
    params["config_hash"] = cfg.config_hash()
    io.write_json(out.with_name(out.stem + ".stats.json"),
                  {"stats": stats, "manifest": manifest_of(args, params)})

    with io.atomic_path(out.with_name(out.stem + ".stats.png")) as tmp:
        bdhs_figure(stats).savefig(tmp, dpi=120, format="png")
    logger.info("%s: %d pairs; accepted after each iteration: %s; mean similarity %.3f, length ratio %.2f", out,
                stats["n"], [round(a, 3) for a in stats["accepted_share_after_iteration"]],
                stats["similarity_mean"], stats["length_ratio_mean"])


def _convert(args) -> None:
    cfg = ConvertConfig(image_root=args.image_root, on_missing="skip" if args.skip_missing_images else "error",
                        limit=args.limit, seed=args.seed, source=args.source)
    result = convert(args.dataset, args.input, cfg)
    if args.n is not None:
        result.records = subsample(result.records, args.n, args.seed, name=str(args.input))
    write_result(result, args.out)
    out = Path(args.out)
    params = params_of(args)
    io.write_json(out.with_name(out.stem + ".convert.json"),
                  {"stats": result.stats, "records": len(result.records), "kind": result.kind,
                   "manifest": manifest_of(args, params)})
    logger.info("wrote %d %s records to %s", len(result.records), result.kind, out)


def _prefs_mix(args) -> None:
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
    names = args.names or [Path(p).stem for p in args.prefs]
    if len(names) != len(args.prefs):
        raise ValueError(f"--names gives {len(names)} names for {len(args.prefs)} preference files")
    review_file_names(names)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer is not None else None
    embedder = None
    if args.embed or args.embedder is not None:
        embedder = SentenceEmbedder(args.embedder)
    result = review({n: load_preferences(p) for n, p in zip(names, args.prefs)}, tokenizer=tokenizer,
                    embedder=embedder, objects=args.objects, top=args.top)
    params = params_of(args)
    params["prefs"] = [str(p) for p in args.prefs]
    save_review(result, args.out, build_manifest(None, " ".join(sys.argv), params))
    logger.info("reviewed %s (%s pairs; lengths in %s) into %s", ", ".join(names),
                ", ".join(str(r["pairs"]) for r in result["counts"]), result["unit"], args.out)


def _parser_bdhs(sub) -> None:
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


def _parser_convert(sub) -> None:
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


def _parser_prefs_mix(sub) -> None:
    p = sub.add_parser("prefs-mix", help="seeded subsample, mix and split of preference files")
    p.add_argument("inputs", nargs="+", help="PREFS[:N]: a preference file (.jsonl, .parquet, Arrow folder), "
                   "optionally with a seeded subsample size")
    p.add_argument("--out", required=True, type=Path, help=".jsonl, .parquet or an Arrow folder")
    p.add_argument("--val", type=int, default=0, help="hold out a seeded random N pairs of the mix")
    p.add_argument("--val-out", type=Path, default=None, help="where the held-out pairs go")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_prefs_mix)


def _parser_review(sub) -> None:
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


def add_commands(sub) -> None:
    _parser_bdhs(sub)
    _parser_convert(sub)
    _parser_prefs_mix(sub)
    _parser_review(sub)
