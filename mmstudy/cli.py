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

from mmstudy import io
from mmstudy.commands import data, evaluate, study, train, world
from mmstudy.runs import use_cpu_threads

logger = logging.getLogger("mmstudy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmstudy", description=__doc__.split("\n")[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads for this command and the notebooks it runs (default: "
                             "OMP_NUM_THREADS, else the cores this process may use; see docs/study.md)")
    sub = parser.add_subparsers(dest="command", required=True)
    world.add_commands(sub)
    evaluate.add_commands(sub)
    data.add_commands(sub)
    train.add_commands(sub)
    study.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    try:
        use_cpu_threads(args.threads)
        shown = args.func(args)       # a handler returns what the command prints, if anything
        if shown:
            sys.stdout.write(shown + "\n")
    except (io.DataError, FileExistsError, ValueError) as e:
        logger.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
