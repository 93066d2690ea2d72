"""Benchmark: mmstudy's batched BDHS generation against a per-example Hugging Face `generate` loop.

Both do the same work: one guided BDHS iteration (attention masking, rho_th = 0.99) over the same examples, with
the same masks and the same cuts; the loop calls `generate` once per sentence of every example, as a
straightforward implementation would. Both are timed in this run, on this machine, and their outputs compared.

    python bench/bdhs_vs_generate.py [--model MODEL_DIR --world WORLD_DIR] [--n 256] [--quick]

Without --model a smoke world and model are built in a temporary directory first (about 15 s). The last line is
`speedup=<loop time / ours>`.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from common import loop_generate, smoke_setup

from mmstudy.data.bdhs import BDHSConfig, ImageLoader, draw_iteration, load_examples, one_iteration
from mmstudy.models.llava import load_llava


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--world", type=Path, default=None)
    parser.add_argument("--sft", default="llava_instruct_train.json", help="instruction file in the world")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=256, help="examples (default 256; --quick: 48)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    n = 48 if args.quick else args.n
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, world = (args.model, args.world) if args.model else smoke_setup(Path(tmp))
        model, processor = load_llava(model_dir, device=args.device)
        examples = load_examples(world / args.sft, world / "images", n=n, seed=0)
        images = ImageLoader(world / "images")
        cfg = BDHSConfig(rho_th=0.99, iterations=1)
        n_tokens = model.config.image_seq_length
        for ex in examples:
            images(ex)                                    # both timings exclude image loading
        sentences = sum(len(draw_iteration(ex, 1, n_tokens, cfg, True).prefixes) for ex in examples)
        one_iteration(model, processor, examples[:8], 1, cfg, images, {ex.id: n_tokens for ex in examples},
                       args.batch_size, progress=False)          # warm-up (lazy initialisation, CUDA kernels)
        start = time.perf_counter()
        ours, _, _ = one_iteration(model, processor, examples, 1, cfg, images, {ex.id: n_tokens for ex in examples},
                                    args.batch_size, progress=False)
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        loop = loop_generate(model, processor, examples, cfg, images, {ex.id: n_tokens for ex in examples})
        t_loop = time.perf_counter() - start
    same = sum(a == b for a, b in zip(ours, loop))
    print(f"examples={len(examples)} sentences={sentences} device={model.device} "  # noqa: T201
          f"threads={torch.get_num_threads()}")
    print(f"batched (ours): {t_ours:.2f} s   per-example generate loop: {t_loop:.2f} s")  # noqa: T201
    print(f"identical outputs: {same} of {len(examples)}")  # noqa: T201
    print(f"speedup={t_loop / t_ours:.2f}")  # noqa: T201


if __name__ == "__main__":
    main()
