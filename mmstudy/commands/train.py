"""The training commands: offline and online preference training, the reward model and RLOO."""

from __future__ import annotations

import logging
from pathlib import Path

from mmstudy import io
from mmstudy.commands.common import add_judge_limits, judge_limits, manifest_of
from mmstudy.data.preferences import load_preferences
from mmstudy.models.sampling import make_sampler
from mmstudy.study import options
from mmstudy.training.dpo import train_dpo
from mmstudy.training.grpo import train_grpo
from mmstudy.training.online import pair_source
from mmstudy.training.reward import (
    RewardTrainConfig,
    accuracy_table,
    load_reward_model,
    rm_accuracy,
    train_reward_model,
)
from mmstudy.training.rloo import RLOOConfig, load_prompts, train_rloo

logger = logging.getLogger("mmstudy")


def _add_trainer_args(p) -> None:
    """The options train-dpo and train-online share: model, output, objective, what trains, schedule."""
    p.add_argument("--model", required=True, type=Path, help="local LLaVA / LLaVA-NeXT checkpoint directory")
    p.add_argument("--image-root", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="run directory: metrics.jsonl, checkpoints/, model/")
    p.add_argument("--device", default="cpu")
    options.add_options(p, options.DPO)


def _run_trainer(args, pairs_path: Path, online=None) -> None:
    pairs = load_preferences(pairs_path, image_root=args.image_root)
    cfg = options.from_args(args, options.DPO)
    summary = train_dpo(args.model, pairs, cfg, args.out, args.image_root, device=args.device,
                        progress=not args.quiet, online=online)
    io.write_json(Path(args.out) / "manifest.json", manifest_of(args))
    logger.info("trained %d steps on %d records; model in %s%s", summary["steps"], summary["pairs"],
                Path(args.out) / "model", f"; online: {summary['online']}" if online is not None else "")


def _train_dpo(args) -> None:
    _run_trainer(args, args.prefs)


def _rm_accuracies(rm_dir: Path, prefs: list[Path], image_root: Path, args) -> dict:
    rm, processor = load_reward_model(rm_dir, device=args.device)
    result = {str(p): rm_accuracy(rm, processor, load_preferences(p, image_root=image_root), image_root,
                                  batch_size=args.eval_batch_size, seed=args.seed, progress=not args.quiet)
              for p in prefs}
    logger.info("reward-model pairwise accuracy on held-out pairs:\n%s", accuracy_table(result))
    return result


def _train_rm(args) -> None:
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
    manifest = manifest_of(args)
    io.write_json(out / "manifest.json", manifest)
    logger.info("trained the reward model %d steps on %d pairs: %s", summary["steps"], summary["pairs"], out / "rm")
    if args.eval_prefs:
        accuracy = _rm_accuracies(out / "rm", args.eval_prefs, eval_root, args)
        io.write_json(out / "accuracy.json", {"accuracy": accuracy, "manifest": manifest})


def _eval_rm(args) -> str:
    accuracy = _rm_accuracies(args.rm, args.prefs, args.image_root, args)
    if args.out is not None:
        io.write_json(args.out, {"accuracy": accuracy,
                                 "manifest": manifest_of(args)})
    return accuracy_table(accuracy)


def _train_rloo(args) -> None:
    cfg = RLOOConfig(k=args.k, beta=args.beta, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                     normalize=args.normalize, lora_r=args.lora_r, lora_alpha=args.lora_alpha, lr=args.lr,
                     steps=args.steps, batch_size=args.batch_size, micro_batch=args.micro_batch,
                     log_samples_every=args.log_samples_every, checkpoint_every=args.checkpoint_every,
                     merge=not args.adapter_only, seed=args.seed)
    prompts = load_prompts(args.prompts, image_root=args.image_root)
    summary = train_rloo(args.model, args.rm, prompts, cfg, args.out, args.image_root, device=args.device,
                         progress=not args.quiet)
    io.write_json(Path(args.out) / "manifest.json", manifest_of(args))
    logger.info("RLOO: %d steps on %d prompts; model in %s", summary["steps"], summary["prompts"],
                Path(args.out) / "model")


def _train_online(args) -> None:
    cfg = options.from_args(args, options.ONLINE, seed=args.seed)
    sampler = None
    if args.sampler == "vllm":
        sampler = make_sampler("vllm", args.model, gpu_memory_utilization=args.vllm_memory)
    source = pair_source(cfg, args.image_root, args.world, args.judge, args.judge_cache, args.rho, args.iterations,
                         embedder=args.embedder, device=args.device, sampler=sampler, judge_options=judge_limits(args))
    _run_trainer(args, args.prompts, source)


def _parser_train_dpo(sub) -> None:
    p = sub.add_parser("train-dpo", help="offline preference training: DPO, IPO, SLiC or Avg-DPO, LoRA or full")
    p.add_argument("--prefs", required=True, type=Path, help="preference JSON lines (mmstudy's schema)")
    _add_trainer_args(p)
    p.set_defaults(func=_train_dpo)


def _parser_train_rm(sub) -> None:
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


def _parser_eval_rm(sub) -> None:
    p = sub.add_parser("eval-rm", help="pairwise accuracy of a reward model on held-out pairs, per source")
    p.add_argument("--rm", required=True, type=Path, help="reward-model directory (train-rm's RUN_DIR/rm)")
    p.add_argument("--prefs", required=True, nargs="+", type=Path, help="held-out pair files")
    p.add_argument("--image-root", required=True, type=Path)
    p.add_argument("--out", type=Path, default=None, help="also write the accuracies as JSON")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    p.set_defaults(func=_eval_rm)


def _parser_train_rloo(sub) -> None:
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


def _train_grpo(args) -> None:
    cfg = options.from_args(args, options.GRPO)
    prompts = load_prompts(args.prompts, image_root=args.world / "images")
    summary = train_grpo(args.model, prompts, cfg, args.out, args.world, device=args.device, progress=not args.quiet)
    io.write_json(Path(args.out) / "manifest.json", manifest_of(args))
    logger.info("GRPO: %d rounds (%d optimizer steps) on %d prompts; model in %s", summary["steps"],
                summary["optimizer_steps"], summary["prompts"], Path(args.out) / "model")


def _parser_train_grpo(sub) -> None:
    p = sub.add_parser("train-grpo", help="GRPO with the world's exact rewards: k samples per prompt, group-relative "
                       "advantages, clipped ratio, KL to the base, LoRA")
    p.add_argument("--model", required=True, type=Path, help="local LLaVA / LLaVA-NeXT checkpoint: the policy")
    p.add_argument("--prompts", required=True, type=Path, help="preference or sft file of the world: prompts, images "
                   "and reference answers ('chosen')")
    p.add_argument("--world", required=True, type=Path, help="the world whose scenes score the answers")
    p.add_argument("--out", required=True, type=Path, help="run directory: model/, metrics.jsonl, samples.jsonl, "
                   "checkpoints/, manifest.json")
    p.add_argument("--device", default="cpu")
    options.add_options(p, options.GRPO)
    p.set_defaults(func=_train_grpo)


def _parser_train_online(sub) -> None:
    p = sub.add_parser("train-online", help="Online-DPO with a judge, Mixed-DPO or Online-BDHS (the same trainer)")
    p.add_argument("--prompts", required=True, type=Path,
                   help="preference file whose prompts and images are sampled (its pairs: the offline data)")
    p.add_argument("--judge", default="oracle", help="oracle[:ERROR_RATE], local:MODEL_DIR or http:URL#MODEL")
    p.add_argument("--judge-cache", type=Path, default=None, help="cache of HTTP judge replies")
    add_judge_limits(p)
    p.add_argument("--world", type=Path, default=None,
                   help="world directory: ground truth for the oracle judge and the judge-agreement metric")
    p.add_argument("--rho", type=float, default=0.99, help="online BDHS masking threshold")
    p.add_argument("--iterations", type=int, default=5, help="online BDHS iterations N_BDHS")
    p.add_argument("--embedder", type=Path, default=None, help="online BDHS sentence embedder directory")
    p.add_argument("--sampler", default="hf", choices=["hf", "vllm"],
                   help="online_dpo / mixed sampling backend: Hugging Face generate, or vLLM (GPU, optional install)")
    p.add_argument("--vllm-memory", type=float, default=0.3,
                   help="vllm sampler: share of GPU memory for the engine (vLLM's gpu_memory_utilization)")
    options.add_options(p, options.ONLINE)
    _add_trainer_args(p)
    p.set_defaults(func=_train_online)


def add_commands(sub) -> None:
    _parser_train_dpo(sub)
    _parser_train_rm(sub)
    _parser_eval_rm(sub)
    _parser_train_rloo(sub)
    _parser_train_grpo(sub)
    _parser_train_online(sub)
