"""Benchmark: mmstudy's DPO trainer against TRL's `DPOTrainer` (TRL is a benchmark-only dependency here).

Same model, same pairs, same batch size, LoRA settings, learning rate and epochs: the default profile's recipe
(`DPOTrainConfig`'s defaults: LoRA r 16, alpha 32, 16 pairs per step, 4 epochs, so our reference log-probs,
computed once, serve all four); each trainer runs in its own subprocess (so peak memory, the processes' max RSS,
is its own), all in this run. TRL runs twice: with the same LoRA settings (its defaults otherwise: the
reference recomputed at every step; TRL 1.16 refuses `precompute_ref_log_probs=True` for vision datasets), and as
the two-model setup (full fine-tuning beside a frozen reference copy). On a tiny model
the RSS is mostly the torch runtime, so the memory ratios only mean something for real checkpoints. Also measures
this machine's fp32 matmul peak and our achieved training FLOP/s against it (language-model matmuls only: 2 N per
token forward, 4 N backward, plus 2 N for the reference forward, N = language-model parameters without embeddings).

    python bench/dpo_vs_trl.py [--model MODEL_DIR --world WORLD_DIR] [--pairs 256] [--quick]

Without --model a smoke world and model are built first. The last line is
`pairs_per_s_ratio=<ours/TRL> peak_mem_ratio=<ours/TRL>`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import smoke_setup

from mmstudy.training.dpo import DPOTrainConfig

RECIPE = DPOTrainConfig()
LORA_R, LORA_ALPHA, BATCH, LR, EPOCHS = RECIPE.lora_r, RECIPE.lora_alpha, RECIPE.batch_size, RECIPE.lr, RECIPE.epochs


def run_ours(world: Path, model_dir: str, prefs: Path, out: Path, epochs: int) -> dict:
    from mmstudy.data.preferences import load_preferences
    from mmstudy.training.dpo import train_dpo

    pairs = load_preferences(prefs)
    cfg = DPOTrainConfig(lora_r=LORA_R, lora_alpha=LORA_ALPHA, batch_size=BATCH, lr=LR, projector_lr=LR,
                         epochs=epochs, checkpoint_every=0, precompute_ref=True, train_projector=False)
    summary = train_dpo(model_dir, pairs, cfg, out, world / "images", progress=False)
    # the same span as TRL's trainer.train(): image processing, the reference pass and the loop (loading the
    # model and saving the result are outside both)
    return {"seconds": summary["setup_seconds"] + summary["seconds"], "pairs": summary["pairs"] * epochs}


def run_trl(world: Path, model_dir: str, prefs: Path, out: Path, epochs: int, two_models: bool = False) -> dict:
    """TRL's DPOTrainer with the same LoRA settings (reference = adapters disabled), or, with `two_models`, the
    two-model setup: full fine-tuning of the policy beside an explicit frozen reference copy."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from mmstudy import io
    from mmstudy.models.llava import LORA_TARGET_REGEX, load_llava

    pairs = [json.loads(line) for line in prefs.read_text().splitlines()]
    model, processor = load_llava(model_dir)
    processor.tokenizer.padding_side = "right"
    text = lambda role, t: [{"role": role, "content": [{"type": "text", "text": t}]}]  # noqa: E731
    rows = [{"images": [io.load_image(world / "images" / p["image"])],
             "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p["prompt"]}]}],
             "chosen": text("assistant", p["chosen"]), "rejected": text("assistant", p["rejected"])} for p in pairs]
    cfg = DPOConfig(output_dir=str(out), per_device_train_batch_size=BATCH, num_train_epochs=epochs, learning_rate=LR,
                    beta=0.1, logging_steps=10, report_to=[], use_cpu=not torch.cuda.is_available(),
                    save_strategy="no", max_length=None, remove_unused_columns=False, bf16=False,
                    disable_tqdm=True)
    if two_models:
        import copy

        extra = {"ref_model": copy.deepcopy(model)}
    else:
        extra = {"peft_config": LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=LORA_TARGET_REGEX)}
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=processor,
                         **extra)
    start = time.perf_counter()
    trainer.train()
    return {"seconds": time.perf_counter() - start, "pairs": len(pairs) * epochs}


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def training_flops(model_dir: str, prefs: Path, world: Path, epochs: int) -> float:
    """Matmul FLOPs of our run: (2 + 4 + 2) N per token; a pair's prompt runs once, then each response."""
    from mmstudy.data.preferences import load_preferences
    from mmstudy.models.llava import load_llava
    from mmstudy.training.dpo import encode_pairs

    model, processor = load_llava(model_dir)
    lm = model.model.language_model
    n = sum(p.numel() for name, p in lm.named_parameters() if "embed" not in name)
    encoded, _ = encode_pairs(processor, load_preferences(prefs), world / "images", 10**9, "error", False)
    tokens = sum(len(p.prompt_ids) + sum(map(len, p.responses)) for p in encoded)
    return 8 * n * tokens * epochs


def worker(args) -> None:
    if args.worker == "ours":
        result = run_ours(args.world, str(args.model), args.prefs, args.out, args.epochs)
    else:
        result = run_trl(args.world, str(args.model), args.prefs, args.out, args.epochs, args.worker == "trl2")
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))  # noqa: T201


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--world", type=Path, default=None)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--quick", action="store_true", help="64 pairs: a run under a minute")
    parser.add_argument("--worker", choices=["ours", "trl", "trl2"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prefs", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    import logging

    logging.basicConfig(level=logging.WARNING)
    n_pairs = 64 if args.quick else args.pairs
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, world = (args.model, args.world) if args.model else smoke_setup(tmp)
        from mmstudy import io
        from mmstudy.editions.povid import povid_like_pairs

        prefs = tmp / "prefs.jsonl"
        io.write_jsonl(prefs, povid_like_pairs(world, n=n_pairs, seed=0))
        results = {}
        for name in ("ours", "trl", "trl2"):
            cmd = [sys.executable, __file__, "--worker", name, "--model", str(model), "--world", str(world),
                   "--prefs", str(prefs), "--out", str(tmp / name), "--epochs", str(args.epochs)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            results[name] = json.loads(line[len("RESULT "):])
        peak = matmul_peak()
        flops = training_flops(str(model), prefs, world, args.epochs)
    ours, trl, two = results["ours"], results["trl"], results["trl2"]
    rate = {k: v["pairs"] / v["seconds"] for k, v in results.items()}
    print(f"pairs={n_pairs} epochs={args.epochs} batch={BATCH} lora_r={LORA_R} "  # noqa: T201
          f"threads={torch.get_num_threads()}")
    for name, r in (("ours (LoRA, adapters-off reference, precomputed)", ours),
                    ("TRL  (LoRA, adapters-off reference)", trl),
                    ("TRL  (two models: full fine-tuning + reference copy)", two)):
        print(f"{name}: {r['seconds']:.2f} s, {r['pairs'] / r['seconds']:.1f} pairs/s, "  # noqa: T201
              f"peak RSS {r['maxrss_mb']:.0f} MB")
    achieved = flops / ours["seconds"]
    print(f"our training FLOP/s: {achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.1f} % of this "  # noqa: T201
          f"machine's fp32 matmul peak ({peak / 1e9:.0f} GFLOP/s)")
    print(f"peak memory against the two-model setup: {ours['maxrss_mb'] / two['maxrss_mb']:.2f}")  # noqa: T201
    print(f"pairs_per_s_ratio={rate['ours'] / rate['trl']:.2f} "  # noqa: T201
          f"peak_mem_ratio={ours['maxrss_mb'] / trl['maxrss_mb']:.2f}")


if __name__ == "__main__":
    main()
