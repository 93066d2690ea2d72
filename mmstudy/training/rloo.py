"""RLOO, REINFORCE Leave-One-Out (Ahmadian et al. 2024): the RL baseline of Amirloo et al. §5.5 (Table 8, Eq. 2;
docs/alignment.md), on-policy samples from a LoRA-adapted LLaVA scored by a Bradley-Terry reward model
(`mmstudy.training.reward`). The prompts and images are those of the offline dataset in use (a preference or an sft
file), as the paper takes POVID's.

Each step takes `batch_size` prompts (a seeded order, epoch after epoch) and does:

    samples    k responses per prompt from the current policy at `temperature`, batched with the KV cache.
               Sampling is greedy decoding of Gumbel-perturbed logits, argmax(logits / T + G), an exact draw from
               softmax(logits / T); each row draws its noise from its own generator seeded by
               derive_seed(seed, "rloo", step, example id, sample index), so a sample does not depend on the batch it
               runs in and a resumed run regenerates exactly the same samples
    reward     r_i = RM(x, y_i), normalized by `normalize`: "dataset" (the paper: zero mean and unit variance with the
               mean and std of the RM's scores of the prompt file's own responses, chosen and rejected, computed
               once and kept in reward_stats.json), "batch" (whitened over the step's samples) or "none"
    KL         kl_i = sum over the tokens of y_i of log pi(y_t | .) - log pi_ref(y_t | .), the reference being the
               same model with its LoRA adapters disabled (no second copy); the return is R_i = r_i - beta kl_i
               (Eq. 2's penalty as a sequence-level reward, as TRL's RLOO)
    baseline   b_i = the mean of the other k - 1 returns of the same prompt; advantage A_i = R_i - b_i
    loss       -A_i sum_t log pi(y_t | .), averaged over the k x batch_size samples, A_i held constant
    log-probs  those of the sampling distribution, softmax(logits / T), for the loss and the KL alike (as TRL);
               the model stays in eval mode (no dropout), so at the first step policy = reference and KL = 0

Metrics per step (metrics.jsonl): reward mean / std (raw and normalized), KL, return, advantage spread, response
length, loss, gradient norm, and collapse indicators: the share of empty responses, of truncated ones (no EOS
within `max_new_tokens`), the distinct responses per prompt (1: all k differ; small for short yes/no answers
anyway, telling on open-ended prompts) and the distinct word trigrams per response (low: loops). Every sample of
every `log_samples_every`-th step goes to samples.jsonl. Checkpoints (LoRA weights, optimizer, scheduler) every
`checkpoint_every` steps, exact resume, refusal to resume another config; the policy is saved merged as a
Hugging Face directory.

PPO is not implemented: the paper found neither RL method better than the other (both collapse with a
POVID-trained RM, both are stable and below DPO with a VLFeedback one), and RLOO needs no value model.

    >>> train_rloo("models/base", "runs/rm/rm", load_prompts("prefs.jsonl"), RLOOConfig(k=4, beta=0.05),
    ...            "runs/rloo", "world/images")
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from mmstudy import io
from mmstudy.data.preferences import PREFERENCE, SFT, check_records, read_records, subsample
from mmstudy.models.generation import chat_prompt, prepare_inputs, to_model
from mmstudy.models.llava import LORA_TARGET_REGEX, load_llava, save_llava
from mmstudy.progress import progress_bar
from mmstudy.runs import derive_seed
from mmstudy.training.checkpoints import (
    epoch_order,
    image_names,
    lr_schedule,
    optimizer_step,
    records_digest,
    resume_run,
    run_identity,
    save_checkpoint,
    settings_hash,
)
from mmstudy.training.dpo import DPOTrainConfig, EncodedPair, PairScorer, collate, prepare_model, unwrap_llava
from mmstudy.training.reward import encode_prompts, load_reward_model, score_responses

logger = logging.getLogger(__name__)

NORMALIZE = ("dataset", "batch", "none")
LOGS = ("metrics.jsonl", "samples.jsonl")


@dataclass(frozen=True)
class RLOOConfig:
    k: int = 4                         # samples per prompt (the paper: 4); >= 2 for a leave-one-out baseline
    beta: float = 0.05                 # KL coefficient (the paper: 0.4, and higher beta did better)
    temperature: float = 1.0           # sampling temperature (the paper: 1.0)
    max_new_tokens: int = 64           # longest sampled response; longer ones are cut (counted as truncated)
    normalize: str = "dataset"         # dataset (the paper) | batch (per process under DDP) | none: of RM scores
    normalize_records: int = 512       # "dataset": RM statistics over at most this many records (seeded subset)
    lora_r: int = 128                  # LoRA rank on the LM (>= 1: the reference is the model without adapters)
    lora_alpha: int = 256
    lora_target: str = LORA_TARGET_REGEX
    lr: float = 3e-4                   # the paper's RLOO learning rate
    steps: int = 100                   # optimizer steps
    batch_size: int = 8                # prompts per step, over all processes (the paper: 256)
    micro_batch: int = 0               # prompts per forward / backward pass (gradients accumulate); 0: the batch
    generation_batch: int = 64         # rows (prompt x sample) per generate call
    warmup_ratio: float = 0.0          # linear warm-up, then linear decay to 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0         # the paper: 1.0; 0: no clipping
    log_samples_every: int = 10        # write every sample of every N-th step to samples.jsonl; 0: never
    checkpoint_every: int = 50         # optimizer steps; 0: only when stopped early
    keep_checkpoints: int = 2
    merge: bool = True                 # save LoRA merged into the weights (else the adapter beside the base)
    seed: int = 0

    def __post_init__(self):
        if self.normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {self.normalize!r}")
        if self.k < 2:
            raise ValueError(f"k must be >= 2 (the baseline of a sample is the mean of the other k - 1), got {self.k}")
        if self.lora_r < 1:
            raise ValueError("RLOO trains LoRA adapters (the reference is the model with them disabled): lora_r >= 1")
        if self.beta < 0 or self.temperature <= 0 or self.lr <= 0 or self.max_grad_norm < 0:
            raise ValueError("beta and max_grad_norm must be >= 0, temperature and lr > 0")
        if min(self.steps, self.batch_size, self.generation_batch, self.max_new_tokens, self.keep_checkpoints) < 1:
            raise ValueError("steps, batch_size, generation_batch, max_new_tokens and keep_checkpoints must be >= 1")
        if self.micro_batch < 0 or self.log_samples_every < 0 or self.checkpoint_every < 0:
            raise ValueError("micro_batch, log_samples_every and checkpoint_every must be >= 0")
        if self.normalize_records < 2 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("normalize_records must be >= 2 and warmup_ratio in [0, 1)")


# ---------------------------------------------------------------- the estimator (pure)


def leave_one_out_advantages(returns: torch.Tensor) -> torch.Tensor:
    """A_i = R_i - mean_{j != i} R_j over the k samples of each prompt: returns (B, k) -> advantages (B, k)."""
    k = returns.shape[-1]
    if k < 2:
        raise ValueError(f"a leave-one-out baseline needs k >= 2 samples per prompt, got {k}")
    baseline = (returns.sum(-1, keepdim=True) - returns) / (k - 1)
    return returns - baseline


def sequence_kl(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-sample KL estimate sum_t log pi(y_t) - log pi_ref(y_t) from summed response log-probs (any shape)."""
    return policy_logps - ref_logps


def normalize_rewards(rewards: torch.Tensor, mode: str, stats: dict | None = None) -> torch.Tensor:
    """RM scores (B, k) -> normalized: "dataset" (r - stats mean) / stats std, "batch" whitened over all B x k
    values (unbiased std; unchanged when they are all equal), "none" as they are."""
    if mode == "none":
        return rewards
    if mode == "dataset":
        if stats is None:
            raise ValueError("normalize='dataset' needs stats {'mean', 'std'}")
        return (rewards - stats["mean"]) / stats["std"]
    if mode == "batch":
        std = rewards.std() if rewards.numel() > 1 else rewards.new_tensor(0.0)
        return (rewards - rewards.mean()) / std if std > 1e-8 else rewards - rewards.mean()
    raise ValueError(f"normalize must be one of {NORMALIZE}, got {mode!r}")


def rloo_loss(policy_logps: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE with the leave-one-out baseline: -mean(A_i log pi(y_i)), A held constant. Shapes (B, k)."""
    return -(advantages.detach() * policy_logps).mean()


def distinct_trigram_ratio(text: str) -> float | None:
    """Distinct word trigrams / word trigrams of a response (1.0: no trigram repeats); None under 3 words."""
    words = text.lower().split()
    grams = list(zip(words, words[1:], words[2:]))
    return len(set(grams)) / len(grams) if grams else None


def response_stats(texts: Sequence[Sequence[str]], lengths: Sequence[int], truncated: Sequence[bool]) -> dict:
    """Collapse indicators of one step's samples: texts per prompt (B lists of k), token lengths and truncation
    flags (B x k, flattened in prompt order)."""
    flat = [t for row in texts for t in row]
    ratios = [r for r in map(distinct_trigram_ratio, flat) if r is not None]
    return {"response/length": sum(lengths) / len(lengths),
            "response/empty_share": sum(not t for t in flat) / len(flat),
            "response/truncated_share": sum(truncated) / len(truncated),
            "response/distinct_per_prompt": sum(len(set(row)) / len(row) for row in texts) / len(texts),
            "response/distinct_3grams": sum(ratios) / len(ratios) if ratios else None}


# ---------------------------------------------------------------- sampling and scoring


class GumbelSampler(LogitsProcessor):
    """Turns greedy decoding into sampling at `temperature`: scores / T + Gumbel(0, 1) noise, whose argmax is an exact
    draw from softmax(scores / T) (the Gumbel-max trick). Row i draws its noise from a generator seeded with
    seeds[i], one vocabulary-sized draw per decoding step, so its sample depends on its seed alone."""

    def __init__(self, seeds: Sequence[int], temperature: float):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature = temperature

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{scores.shape[0]} rows for {len(self.generators)} seeds")
        u = torch.stack([torch.rand(scores.shape[-1], generator=g, dtype=torch.float64) for g in self.generators])
        gumbel = -torch.log(-torch.log(u.clamp(min=1e-300)))
        return scores.float() / self.temperature + gumbel.to(device=scores.device, dtype=torch.float32)


def cut_at_eos(tokens: Sequence[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    """(the tokens up to and including the first EOS, False), or (all of them, True) when none ends the row."""
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return list(tokens[:i + 1]), False
    return list(tokens), True


def _eos_ids(llava, processor) -> set[int]:
    eos = llava.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return set(eos) | {processor.tokenizer.eos_token_id}


@torch.no_grad()
def sample_responses(model, processor, images: Sequence, prompts: Sequence[str], seeds: Sequence[Sequence[int]],
                     temperature: float, max_new_tokens: int, batch_size: int = 64):
    """len(seeds[b]) samples for each (image, question) b, the s-th drawn with seeds[b][s] (`GumbelSampler`), rows
    batched `batch_size` at a time with the KV cache. Returns (tokens[b][s] ending with EOS unless truncated,
    truncated[b][s])."""
    llava = unwrap_llava(model)
    eos = _eos_ids(llava, processor)
    texts = [chat_prompt(processor, p) for p in prompts]
    rows = [(b, s) for b in range(len(prompts)) for s in range(len(seeds[b]))]
    tokens = [[[] for _ in row] for row in seeds]
    truncated = [[False for _ in row] for row in seeds]
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        inputs = to_model(prepare_inputs(processor, [images[b] for b, _ in part], [texts[b] for b, _ in part]), llava)
        sampler = GumbelSampler([seeds[b][s] for b, s in part], temperature)
        out = llava.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, use_cache=True,
                             logits_processor=LogitsProcessorList([sampler]))
        for (b, s), row in zip(part, out[:, inputs["input_ids"].shape[1]:].tolist()):
            tokens[b][s], truncated[b][s] = cut_at_eos(row, eos)
    return tokens, truncated


def sample_round(model, processor, records: Sequence[dict], image_root, cfg, step: int, tag: str) -> tuple:
    """One round of on-policy samples for an RL trainer (`cfg`: k, seed, temperature, max_new_tokens,
    generation_batch): the records' images, prompts and ids, and per record k token rows, truncation flags and
    decoded texts, the s-th sample of record i drawn with derive_seed(seed, `tag`, step, i, s)."""
    images = record_images(records, image_root)
    prompts, ids = [r["prompt"] for r in records], [r["id"] for r in records]
    seeds = [[derive_seed(cfg.seed, tag, step, i, s) for s in range(cfg.k)] for i in ids]
    tokens, truncated = sample_responses(model, processor, images, prompts, seeds, cfg.temperature,
                                         cfg.max_new_tokens, cfg.generation_batch)
    texts = [[processor.tokenizer.decode(t, skip_special_tokens=True).strip() for t in row] for row in tokens]
    return images, prompts, ids, tokens, truncated, texts


def policy_examples(processor, images: Sequence, prompts: Sequence[str], ids: Sequence[str],
                    samples: Sequence[Sequence[list[int]]]) -> list[EncodedPair]:
    """`collate`-ready examples of sampled token rows (k per prompt), for the policy's and reference's log-probs."""
    return [EncodedPair(str(i), pixels, sizes, prompt_ids, [list(t) for t in rows])
            for (prompt_ids, pixels, sizes), rows, i in zip(encode_prompts(processor, images, prompts), samples, ids)]


# ---------------------------------------------------------------- prompts and reward statistics


def load_prompts(path: str | Path, image_root: str | Path | None = None) -> list[dict]:
    """The validated records of a preference file or an sft file (`mmstudy.data.preferences`): a file whose
    records have a 'rejected' field is checked as preferences. RLOO reads id, image and prompt, and the "dataset"
    reward normalization the responses (chosen, and rejected when present)."""
    records = read_records(path, SFT, image_root)
    if any("rejected" in r for r in records):
        check_records(records, str(path), PREFERENCE)
    if not records:
        raise io.DataError(f"{path}: no records")
    return records


def record_images(records: Sequence[dict], image_root: str | Path) -> list:
    """The records' images, loaded (an unreadable one is a DataError naming the record)."""
    return [io.load_image(Path(image_root) / r["image"], where=f"record id={r['id']!r}") for r in records]


def reward_stats(rm, processor, records: Sequence[dict], image_root: str | Path, batch_size: int = 16) -> dict:
    """Mean and std of the RM's scores of the records' own responses (chosen, and rejected when present):
    the "dataset" normalization. An RM that scores them all alike is an error (nothing to normalize by)."""
    values = []
    for start in range(0, len(records), batch_size):
        part = records[start:start + batch_size]
        images, prompts = record_images(part, image_root), [r["prompt"] for r in part]
        values.append(score_responses(rm, processor, images, prompts, [[r["chosen"]] for r in part]).flatten())
        pairs = [j for j, r in enumerate(part) if "rejected" in r]
        if pairs:
            values.append(score_responses(rm, processor, [images[j] for j in pairs], [prompts[j] for j in pairs],
                                          [[part[j]["rejected"]] for j in pairs]).flatten())
    v = torch.cat(values)
    std = float(v.std()) if len(v) > 1 else 0.0
    if not std > 1e-6:
        raise ValueError(f"the reward model gives {len(v)} responses of the prompt file the same score: no "
                         f"'dataset' normalization possible; use normalize='batch' or 'none'")
    return {"mean": float(v.mean()), "std": std, "n": len(v)}


def _dataset_stats(out: Path, rm, processor, prompts, image_root, cfg: RLOOConfig, rm_dir) -> dict:
    """`reward_stats` on a seeded subset of the prompt file, computed once per run dir (out/reward_stats.json)."""
    path = out / "reward_stats.json"
    key = {"config_hash": settings_hash(cfg), "rm": io.fingerprint(rm_dir)}
    if path.is_file():
        cached = io.read_json(path)
        if {k: cached.get(k) for k in key} == key:
            return cached["stats"]
    subset = subsample(prompts, min(cfg.normalize_records, len(prompts)), cfg.seed, name="prompts")
    stats = reward_stats(rm, processor, subset, image_root)
    logger.info("reward statistics over %d responses of the prompt file: mean %.4f, std %.4f", stats["n"],
                stats["mean"], stats["std"])
    io.write_json(path, {**key, "stats": stats})
    return stats


# ---------------------------------------------------------------- the loop


def lora_policy_config(cfg) -> DPOTrainConfig:
    """LoRA on the LM only, as the paper (base frozen, adapters trained), through offline DPO's `prepare_model`;
    `cfg`: an RL config with lora_r, lora_alpha and lora_target (RLOO's, GRPO's)."""
    return DPOTrainConfig(lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_target=cfg.lora_target,
                          train_projector=False, train_vision=False, train_lm=True)


def step_records(prompts: Sequence[dict], cfg: RLOOConfig, step: int) -> list[dict]:
    """The prompts of 0-based step `step`: a seeded order per epoch over the prompt file, `batch_size` at a time."""
    per_epoch = math.ceil(len(prompts) / cfg.batch_size)
    epoch, in_epoch = divmod(step, per_epoch)
    order = epoch_order(len(prompts), cfg.seed, epoch)
    return [prompts[i] for i in order[in_epoch * cfg.batch_size:(in_epoch + 1) * cfg.batch_size]]


def _forward_backward(scorer, accelerator, batch: dict, rewards: torch.Tensor, beta: float, weight: float):
    """Log-probs of policy and reference, returns, advantages and the loss (scaled by `weight`, the micro batch's
    share) of one micro batch, backpropagated. Returns the detached (B, k) tensors for the metrics."""
    module = accelerator.unwrap_model(scorer)
    n, k = rewards.shape
    logp = scorer(**batch).view(k, n).T                 # rows are sample-major: row s * n + b
    with torch.no_grad(), module.model.disable_adapter():
        ref = module(**batch).view(k, n).T
    kl = sequence_kl(logp.detach(), ref)
    returns = rewards.to(kl.device) - beta * kl
    advantages = leave_one_out_advantages(returns)
    loss = rloo_loss(logp, advantages) * weight
    accelerator.backward(loss)
    return {"logp": logp.detach(), "kl": kl, "returns": returns, "advantages": advantages, "loss": loss.detach()}


def rloo_step(scorer, accelerator, processor, rm, rm_processor, records: Sequence[dict], image_root, cfg: RLOOConfig,
              step: int, stats: dict | None) -> tuple[dict, list[dict]]:
    """Sample, score and backpropagate one step's prompts (the optimizer step is the caller's). Returns (metrics,
    one log record per sample)."""
    module = accelerator.unwrap_model(scorer).eval()
    images, prompts, ids, tokens, truncated, texts = sample_round(module.model, processor, records, image_root, cfg,
                                                                  step, "rloo")
    raw = score_responses(rm, rm_processor, images, prompts, texts)
    rewards = normalize_rewards(raw, cfg.normalize, stats)
    micro = cfg.micro_batch or len(records)
    parts = []
    for start in range(0, len(records), micro):
        sl = slice(start, start + micro)
        examples = policy_examples(processor, images[sl], prompts[sl], ids[sl], tokens[sl])
        batch = collate(examples, processor.tokenizer.pad_token_id, accelerator.device)
        share = len(examples) / len(records)
        parts.append(_forward_backward(scorer, accelerator, batch, rewards[sl], cfg.beta, share))
    got = {name: torch.cat([p[name] for p in parts]).cpu() for name in ("logp", "kl", "returns", "advantages")}
    lengths = [len(t) for row in tokens for t in row]
    metrics = {"loss": float(sum(p["loss"] for p in parts)), "rewards/raw_mean": float(raw.mean()),
               "rewards/raw_std": float(raw.std()), "rewards/mean": float(rewards.mean()),
               "rewards/std": float(rewards.std()), "kl": float(got["kl"].mean()),
               "kl/per_token": float(got["kl"].sum() / sum(lengths)), "returns/mean": float(got["returns"].mean()),
               "advantages/std": float(got["advantages"].std()),
               "advantages/abs_mean": float(got["advantages"].abs().mean()), "logps/mean": float(got["logp"].mean()),
               **response_stats(texts, lengths, [t for row in truncated for t in row])}
    samples = [{"step": step + 1, "id": i, "image": records[b]["image"], "prompt": prompts[b], "sample": s,
                "response": texts[b][s], "reward": float(raw[b, s]),
                "reward_normalized": float(rewards[b, s]), "kl": float(got["kl"][b, s]),
                "advantage": float(got["advantages"][b, s]), "tokens": len(tokens[b][s]),
                "truncated": truncated[b][s]} for b, i in enumerate(ids) for s in range(cfg.k)]
    return metrics, samples


def save_policy(model, processor, path: Path, merge: bool = True) -> None:
    """The LoRA policy as a Hugging Face directory: merged into the weights (a plain LLaVA checkpoint), or the
    adapter beside the processor; atomically. `model` is left as it is."""
    if merge:
        save_llava(copy.deepcopy(model).merge_and_unload(), processor, path)
        return
    with io.atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)


def train_rloo(model_dir: str | Path, rm_dir: str | Path, prompts: Sequence[dict], cfg: RLOOConfig,
               out_dir: str | Path, image_root: str | Path, device: str = "cpu", progress: bool = True,
               stop_after_steps: int | None = None) -> dict:
    """Align the LLaVA in `model_dir` with RLOO against the reward model in `rm_dir` (`mmstudy.training.reward`) on the
    prompts and images of `prompts` (`load_prompts`); saves the policy to `out_dir/model` and resumes from the last
    checkpoint in `out_dir/checkpoints`. `stop_after_steps` ends the run early (as an interruption would), with a
    checkpoint and without the final save."""
    from accelerate import Accelerator

    if not prompts:
        raise ValueError("no prompts to sample from")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=(device == "cpu"))
    torch.manual_seed(cfg.seed)
    model, processor = load_llava(model_dir)
    rm, rm_processor = load_reward_model(rm_dir, device=accelerator.device)
    stats = (_dataset_stats(out, rm, rm_processor, prompts, image_root, cfg, rm_dir) if cfg.normalize == "dataset"
             else None)
    scorer = PairScorer(prepare_model(model, lora_policy_config(cfg)), cfg.temperature)
    optimizer = torch.optim.AdamW([p for p in scorer.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule("linear", cfg.steps,
                                                                         int(cfg.warmup_ratio * cfg.steps)))
    scorer, optimizer = accelerator.prepare(scorer, optimizer)
    policy = accelerator.unwrap_model(scorer).model
    identity = run_identity(config=cfg, prompts=records_digest(prompts), model=io.fingerprint(model_dir),
                            reward_model=io.fingerprint(rm_dir),
                            images=io.files_digest(image_root, image_names(prompts)))
    step, _ = resume_run(out, policy, optimizer, scheduler, identity, LOGS)
    bar = progress_bar(total=cfg.steps, initial=step, desc="RLOO", unit="step", disable=not progress)
    start, world, rank = time.time(), accelerator.num_processes, accelerator.process_index
    while step < cfg.steps:
        records = step_records(prompts, cfg, step)[rank::world]
        metrics, samples = rloo_step(scorer, accelerator, processor, rm, rm_processor, records, image_root, cfg, step,
                                     stats)
        grad_norm = optimizer_step(accelerator, scorer, optimizer, scheduler, cfg.max_grad_norm)
        step += 1
        record = {"step": step, **metrics, "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0],
                  "prompts": len(records) * world, "seconds": round(time.time() - start, 3)}
        stopping = stop_after_steps is not None and stop_after_steps <= step < cfg.steps
        if accelerator.is_main_process:
            io.append_jsonl(out / "metrics.jsonl", [record])
            if cfg.log_samples_every and step % cfg.log_samples_every == 0:
                io.append_jsonl(out / "samples.jsonl", samples)
            if step < cfg.steps and (stopping or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                save_checkpoint(out, policy, optimizer, scheduler, step, identity, cfg.keep_checkpoints)
        bar.update(1)
        bar.set_postfix(reward=f"{record['rewards/raw_mean']:.3f}", kl=f"{record['kl']:.3f}")
        if stopping:
            bar.close()
            return {"stopped_at": step, "total_steps": cfg.steps}
    bar.close()
    summary = {"steps": step, "prompts": len(prompts), "reward_stats": stats, "config": dataclasses.asdict(cfg),
               "seconds": round(time.time() - start, 3)}
    if accelerator.is_main_process:
        save_policy(policy, processor, out / "model", cfg.merge)
        io.write_json(out / "train_summary.json", summary)
    return summary
