"""RL with the world's exact rewards: a group-relative policy-gradient trainer (GRPO-style) whose reward is the
world's oracle, not a learned reward model. Beyond the paper, which had no verifiable reward for hallucination.

Each step takes `batch_size` prompts of a preference or sft file (the same seeded order as RLOO, epoch after
epoch) and does:

    samples     k responses per prompt from the current policy at `temperature` (RLOO's sampler: each row draws
                from its own generator seeded by derive_seed(seed, "grpo", step, example id, sample index), so a
                resumed run regenerates the same samples)
    reward      `world_reward`, from the scene of the prompt's image: for a yes/no question (its reference
                answer has a yes/no), 1 when the answer's yes/no is the reference's, else 0; for anything else,
                (correct objects named - `hallucination_weight` x false claims) / objects in the image, false
                claims being those the oracle finds (absent objects, wrong positions, sizes, counts, contexts)
    advantages  normalised within each prompt's k samples (`group_advantages`): a prompt whose samples all score
                alike teaches nothing
    loss        PPO's clipped ratio per token against the log-probs at sampling time, plus beta times the k3
                estimate of the per-token KL to the reference (the model with its LoRA adapters disabled),
                averaged over each response's tokens, then over responses (`grpo_loss`); `updates` optimizer steps
                on each batch of samples (with 1 the ratio is 1 and the clip never binds)

Metrics per optimizer step (metrics.jsonl): reward mean and std, correct and false claims per response, the
share of right yes/no answers, KL, clipped share, loss, gradient norm, response length and RLOO's collapse
indicators. Samples (with their rewards and the oracle's counts) go to samples.jsonl every `log_samples_every`
sampling rounds. Checkpoints, exact resume and the refusal to resume another run are the other trainers'
(`mmstudy.training.checkpoints`).

    >>> train_grpo("models/base", load_prompts("prefs.jsonl"), GRPOConfig(k=4), "runs/grpo", "world")
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from mmstudy import io
from mmstudy.benchmarks import chair as chair_lib
from mmstudy.judges.oracle import check_answer, facts, world_synonyms
from mmstudy.models.llava import LORA_TARGET_REGEX, load_llava
from mmstudy.progress import progress_bar
from mmstudy.training.checkpoints import (
    image_names,
    keep_records_up_to,
    lr_schedule,
    optimizer_step,
    records_digest,
    resume_run,
    run_identity,
    save_checkpoint,
)
from mmstudy.training.dpo import PairScorer, collate, prepare_model, response_log_probs
from mmstudy.training.online import world_scenes
from mmstudy.training.policy_losses import answer_reward, description_reward, group_advantages, grpo_loss
from mmstudy.training.rloo import (
    lora_policy_config,
    policy_examples,
    response_stats,
    sample_round,
    save_policy,
    step_records,
)
from mmstudy.world.scene import Scene

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GRPOConfig:
    k: int = 4                         # samples per prompt (the group); >= 2
    batch_size: int = 8                # prompts per sampling round
    steps: int = 96                    # sampling rounds
    updates: int = 1                   # optimizer steps on each round's samples (the clip binds from 2)
    temperature: float = 1.0
    max_new_tokens: int = 96
    clip: float = 0.2                  # PPO's ratio bound
    beta: float = 0.04                 # weight of the per-token k3 KL to the reference
    scale_advantages: bool = True      # divide by the group's std (GRPO); False: centre only
    hallucination_weight: float = 1.0  # a false claim costs this many correct mentions
    lora_r: int = 16                   # LoRA on the LM (the reference is the model with the adapters disabled)
    lora_alpha: int = 32
    lora_target: str = LORA_TARGET_REGEX
    lr: float = 5e-5
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    generation_batch: int = 64         # rows (prompt x sample) per generate call
    log_samples_every: int = 1         # sampling rounds; 0: never
    checkpoint_every: int = 16         # sampling rounds; 0: only when stopped early
    keep_checkpoints: int = 2
    merge: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.k < 2:
            raise ValueError(f"k must be >= 2 (advantages are relative to the group), got {self.k}")
        if self.lora_r < 1:
            raise ValueError("GRPO trains LoRA adapters (the reference is the model with them disabled): lora_r >= 1")
        if min(self.batch_size, self.steps, self.updates, self.max_new_tokens, self.generation_batch,
               self.keep_checkpoints) < 1:
            raise ValueError("batch_size, steps, updates, max_new_tokens, generation_batch and keep_checkpoints "
                             "must be >= 1")
        if self.clip <= 0 or self.temperature <= 0 or self.lr <= 0:
            raise ValueError("clip, temperature and lr must be > 0")
        if min(self.beta, self.hallucination_weight, self.weight_decay, self.max_grad_norm) < 0:
            raise ValueError("beta, hallucination_weight, weight_decay and max_grad_norm must be >= 0")
        if self.log_samples_every < 0 or self.checkpoint_every < 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("log_samples_every and checkpoint_every must be >= 0, warmup_ratio in [0, 1)")


# ---------------------------------------------------------------- the reward (pure)


def world_reward(answer: str, scene: Scene, reference: str, hallucination_weight: float = 1.0) -> dict:
    """The oracle's reward of one answer and what it counted: {"reward", "kind" ("yes/no" or "description"),
    "correct" (objects of the image named; for yes/no, 1 when right), "false" (false claims)}."""
    check = check_answer(answer, scene)
    said = facts(answer)
    gold = next((v for kind, v in facts(reference) if kind == "pol"), None)
    if gold is not None:
        right = next((v for kind, v in said if kind == "pol"), None) == gold
        return {"reward": answer_reward(right), "kind": "yes/no", "correct": int(right),
                "false": len(check.hallucinations)}
    present = set(scene.classes())
    named = {cls for _, cls in chair_lib.extract_objects(answer, world_synonyms())} & present
    false = len(check.hallucinations)
    return {"reward": description_reward(len(named), false, len(present), hallucination_weight),
            "kind": "description", "correct": len(named), "false": false}


def scenes_of(records: Sequence[dict], world_dir: str | Path) -> dict[str, Scene]:
    """The scene of each record's image (`online.world_scenes`: train and validation scenes, and the fresh scenes
    of the world editions); a record whose image is not a scene of the world is a DataError naming it."""
    lookup = world_scenes(world_dir)
    by_image = {r["image"]: lookup(r["image"]) for r in records}
    for n, r in enumerate(records, start=1):
        if by_image[r["image"]] is None:
            raise io.DataError(f"record {n} (id={r['id']!r}): image {r['image']!r} is not a scene of the world in "
                               f"{world_dir}; GRPO's reward needs the world's ground truth")
    return by_image


# ---------------------------------------------------------------- one sampling round


class TokenScorer(PairScorer):
    """Per-token log-probs (rows, tokens) of the response rows of a `collate` batch, 0 at padding."""

    def forward(self, prompt_ids, prompt_mask, response_ids, response_mask, pixel_values, n_responses: int,
                image_sizes=None) -> torch.Tensor:
        logp = response_log_probs(self.model, prompt_ids, prompt_mask, response_ids, response_mask, pixel_values,
                                  n_responses, image_sizes, self.temperature)
        return logp.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1) * response_mask


def grpo_round(scorer, accelerator, optimizer, scheduler, processor, records: Sequence[dict],
               scenes: dict[str, Scene], image_root, cfg: GRPOConfig, step: int) -> tuple[list[dict], list[dict]]:
    """Sample, reward and train on one round's prompts (`cfg.updates` optimizer steps). Returns (one metrics record
    per optimizer step, one log record per sample)."""
    module = accelerator.unwrap_model(scorer).eval()
    images, prompts, ids, tokens, truncated, texts = sample_round(module.model, processor, records, image_root, cfg,
                                                                  step, "grpo")
    found = [[world_reward(t, scenes[r["image"]], r["chosen"], cfg.hallucination_weight) for t in row]
             for r, row in zip(records, texts)]
    rewards = torch.tensor([[f["reward"] for f in row] for row in found], dtype=torch.float32)
    advantages = group_advantages(rewards, scale=cfg.scale_advantages)
    batch = collate(policy_examples(processor, images, prompts, ids, tokens), processor.tokenizer.pad_token_id,
                    accelerator.device)
    mask = batch["response_mask"]
    rows = advantages.T.reshape(-1).to(mask.device)         # rows are sample-major: row s * n + b
    with torch.no_grad():
        old = scorer(**batch)
        with module.model.disable_adapter():
            ref = module(**batch)
    metrics = []
    for _ in range(cfg.updates):
        loss, stats = grpo_loss(scorer(**batch), old, ref, rows, mask, cfg.clip, cfg.beta)
        accelerator.backward(loss)
        grad_norm = optimizer_step(accelerator, scorer, optimizer, scheduler, cfg.max_grad_norm)
        metrics.append({"loss": float(loss.detach()), **stats, "grad_norm": grad_norm,
                        "lr": scheduler.get_last_lr()[0]})
    flat = [f for row in found for f in row]
    lengths = [len(t) for row in tokens for t in row]
    yes_no = [f["correct"] for f in flat if f["kind"] == "yes/no"]
    shared = {"rewards/mean": float(rewards.mean()), "rewards/std": float(rewards.std()),
              "oracle/correct": sum(f["correct"] for f in flat if f["kind"] == "description") / len(flat),
              "oracle/false": sum(f["false"] for f in flat) / len(flat),
              "oracle/yes_no_right": sum(yes_no) / len(yes_no) if yes_no else None,
              "advantages/abs_mean": float(advantages.abs().mean()),
              **response_stats(texts, lengths, [t for row in truncated for t in row])}
    metrics = [{**shared, **m} for m in metrics]
    samples = [{"step": step + 1, "id": i, "image": records[b]["image"], "prompt": prompts[b], "sample": s,
                "response": texts[b][s], **found[b][s],
                "advantage": float(advantages[b, s]), "tokens": len(tokens[b][s]), "truncated": truncated[b][s]}
               for b, i in enumerate(ids) for s in range(cfg.k)]
    return metrics, samples


# ---------------------------------------------------------------- the loop


def train_grpo(model_dir: str | Path, prompts: Sequence[dict], cfg: GRPOConfig, out_dir: str | Path,
               world_dir: str | Path, device: str = "cpu", progress: bool = True,
               stop_after_steps: int | None = None) -> dict:
    """Align the LLaVA in `model_dir` with GRPO and the world's oracle reward on the prompts (and reference
    answers, their 'chosen') of `prompts`, whose images are scenes of the world in `world_dir`; the policy is saved
    to out_dir/model. Resumes from the last checkpoint in out_dir/checkpoints; `stop_after_steps` ends early (as an
    interruption would) after that many sampling rounds."""
    from accelerate import Accelerator

    out, world_dir = Path(out_dir), Path(world_dir)
    out.mkdir(parents=True, exist_ok=True)
    scenes = scenes_of(prompts, world_dir)
    accelerator = Accelerator(cpu=(device == "cpu"))
    torch.manual_seed(cfg.seed)
    model, processor = load_llava(model_dir)
    scorer = TokenScorer(prepare_model(model, lora_policy_config(cfg)), cfg.temperature)
    optimizer = torch.optim.AdamW([p for p in scorer.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    total = cfg.steps * cfg.updates
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule("linear", total,
                                                                         int(cfg.warmup_ratio * total)))
    scorer, optimizer = accelerator.prepare(scorer, optimizer)
    policy = accelerator.unwrap_model(scorer).model
    identity = run_identity(config=cfg, prompts=records_digest(prompts), model=io.fingerprint(model_dir),
                            world=io.fingerprint(world_dir / "world.json"),
                            images=io.files_digest(world_dir / "images", image_names(prompts)))
    done, _ = resume_run(out, policy, optimizer, scheduler, identity, ("metrics.jsonl",))
    step = done // cfg.updates                              # checkpoints fall between rounds
    keep_records_up_to(out / "samples.jsonl", step)         # samples count rounds, not optimizer steps
    bar = progress_bar(total=cfg.steps, initial=step, desc="GRPO", unit="round", disable=not progress)
    start = time.time()
    while step < cfg.steps:
        records = step_records(prompts, cfg, step)
        metrics, samples = grpo_round(scorer, accelerator, optimizer, scheduler, processor, records, scenes,
                                      world_dir / "images", cfg, step)
        step += 1
        logged = [{"step": step * cfg.updates - len(metrics) + j + 1, "round": step, **m,
                   "seconds": round(time.time() - start, 3)} for j, m in enumerate(metrics)]
        stopping = stop_after_steps is not None and stop_after_steps <= step < cfg.steps
        if accelerator.is_main_process:
            io.append_jsonl(out / "metrics.jsonl", logged)
            if cfg.log_samples_every and step % cfg.log_samples_every == 0:
                io.append_jsonl(out / "samples.jsonl", samples)
            if step < cfg.steps and (stopping or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                save_checkpoint(out, policy, optimizer, scheduler, step * cfg.updates, identity,
                                cfg.keep_checkpoints)
        bar.update(1)
        bar.set_postfix(reward=f"{logged[-1]['rewards/mean']:.3f}", kl=f"{logged[-1]['kl']:.3f}")
        if stopping:
            bar.close()
            return {"stopped_at": step, "total_steps": cfg.steps}
    bar.close()
    summary = {"steps": step, "optimizer_steps": step * cfg.updates, "prompts": len(prompts),
               "config": dataclasses.asdict(cfg), "seconds": round(time.time() - start, 3)}
    if accelerator.is_main_process:
        save_policy(policy, processor, out / "model", cfg.merge)
        io.write_json(out / "train_summary.json", summary)
    return summary
