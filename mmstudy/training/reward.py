"""The reward model of the RL baseline (Amirloo et al. §5.5, Eq. 1, Tables 7-8; docs/alignment.md): a LLaVA backbone
with a scalar head, trained with the Bradley-Terry loss on preference pairs, and its pairwise accuracy on held-out
pairs per dataset (the paper's Table 7).

    backbone   any `mmstudy.models.llava.load_llava` checkpoint (the tiny world LLaVA, a local LLaVA 1.5 / 1.6); LoRA
    on the
               language model through peft (rank, alpha, target regex, as offline DPO), or full fine-tuning of the
               language model (`lora_r=0`); the vision tower frozen, the projector optional
    score      r(x, y) = w . h + b, h the final hidden state (after the LM's last norm) of the last token of
               prompt + response, which is the EOS that closes the response: every response is encoded with one,
               so the score reads a position that has seen the whole response, pad positions never
    batches    a pair's prompt (its image included) runs once; its chosen and rejected responses continue from the
               prompt's KV cache (as `mmstudy.training.dpo.PairScorer`), gradients flowing through the shared prefix
    loss       Bradley-Terry -log sigma(r(x, y+) - r(x, y-)) (Eq. 1); optionally + eta (r(x, y+) + r(x, y-))^2, the
               reward-centering term of Eisenstein et al. 2023 (TRL's `center_rewards_coefficient`), which pins the
               free offset of r near 0 so that the rewards of different RMs share a scale
    runs       as offline DPO: seeded order, AdamW, warm-up then constant (the paper) or linear decay, gradient
               clipping, metrics.jsonl (loss, accuracy, margin per step), checkpoints, exact resume, refusal to
               resume with another config
    saved as   a directory: backbone/ (a Hugging Face LLaVA directory, LoRA merged), head.safetensors,
               reward_config.json; written atomically

    >>> summary = train_reward_model("models/base", pairs, RewardTrainConfig(lr=1e-4), "runs/rm", "world/images")
    >>> rm, processor = load_reward_model("runs/rm/rm")
    >>> rm_accuracy(rm, processor, held_out, "world/images")["per_source"]["world_povid"]["accuracy"]
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

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mmstudy import io
from mmstudy.benchmarks.stats import bootstrap_ci
from mmstudy.models.generation import chat_prompt
from mmstudy.models.llava import LORA_TARGET_REGEX, load_llava, save_llava
from mmstudy.progress import progress_bar
from mmstudy.training.checkpoints import (
    SCHEDULES,
    epoch_order,
    image_names,
    lr_schedule,
    optimizer_step,
    records_digest,
    resume_run,
    run_identity,
    save_checkpoint,
)
from mmstudy.training.dpo import (
    DPOTrainConfig,
    EncodedPair,
    collate,
    encode_pairs,
    prepare_model,
    shared_prefix_hidden,
    text_hidden_size,
    text_max_length,
    unwrap_llava,
)

logger = logging.getLogger(__name__)

BACKBONE_DIR, HEAD_FILE, CONFIG_FILE = "backbone", "head.safetensors", "reward_config.json"
FORMAT = "mmstudy-reward-model"


@dataclass(frozen=True)
class RewardTrainConfig:
    lora_r: int = 128                  # LoRA rank on the LM (the paper's DPO setting); 0: full fine-tuning of the LM
    lora_alpha: int = 256
    lora_dropout: float = 0.0
    lora_target: str = LORA_TARGET_REGEX
    train_projector: bool = False      # also train the multimodal projector (fully); the vision tower stays frozen
    lr: float = 2e-5                   # the paper's RM learning rate (backbone and head alike)
    epochs: int = 1
    batch_size: int = 32               # pairs per optimizer step, over all processes (the paper: 32)
    schedule: str = "constant"         # constant (the paper) | linear: after the warm-up, linear decay to 0
    warmup_ratio: float = 0.03         # share of the steps spent warming up linearly (the paper: 0.03)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0         # 0: no clipping
    center: float = 0.0                # eta of the reward-centering term (Eisenstein et al. 2023 use 0.01); 0: off
    max_length: int | None = None      # None: the language model's context
    on_too_long: str = "error"         # error | skip
    checkpoint_every: int = 50         # optimizer steps; 0: only when stopped early
    keep_checkpoints: int = 2
    seed: int = 0                      # order of the pairs and the head's initialisation

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.on_too_long not in ("error", "skip"):
            raise ValueError(f"on_too_long must be 'error' or 'skip', got {self.on_too_long!r}")
        if self.lr <= 0 or self.center < 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("lr must be > 0; center, weight_decay and max_grad_norm >= 0")
        if self.epochs < 1 or self.batch_size < 1 or self.lora_r < 0 or self.keep_checkpoints < 1:
            raise ValueError("epochs, batch_size and keep_checkpoints must be >= 1, lora_r >= 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


# ---------------------------------------------------------------- losses and metrics (pure)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, center: float = 0.0) -> torch.Tensor:
    """Per-pair loss (B,) of Eq. 1, -log sigma(r+ - r-), plus center * (r+ + r-)^2 (Eisenstein et al. 2023).

    `chosen` and `rejected` are the rewards (B,) of y+ and y-."""
    return -F.logsigmoid(chosen - rejected) + center * (chosen + rejected) ** 2


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float], sources: Sequence[str], n_boot: int = 1000,
                      seed: int = 0) -> dict:
    """Share of pairs the RM orders right (r+ > r-; a tie counts 1/2, so a constant RM scores chance), overall and
    per source, each with a 95 % percentile-bootstrap interval over pairs and the mean margin r+ - r-:
    {"all": {"accuracy", "low", "high", "n", "margin"}, "per_source": {source: {...}}}."""
    c, r, s = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float), np.asarray(sources, dtype=object)
    if not len(c) == len(r) == len(s):
        raise ValueError(f"got {len(c)} chosen, {len(r)} rejected scores and {len(s)} sources")
    correct = np.where(c > r, 1.0, np.where(c == r, 0.5, 0.0))

    def summary(mask: np.ndarray) -> dict:
        ci = bootstrap_ci(correct[mask], np.mean, n_boot=n_boot, seed=seed)
        margin = float(np.mean(c[mask] - r[mask])) if mask.any() else float("nan")
        return {"accuracy": ci["value"], "low": ci["low"], "high": ci["high"], "n": ci["n"], "margin": margin}

    return {"all": summary(np.ones(len(c), dtype=bool)),
            "per_source": {name: summary(s == name) for name in sorted(set(s.tolist()))}}


# ---------------------------------------------------------------- the model


def init_head(hidden_size: int, seed: int) -> torch.nn.Linear:
    """The scalar head: weights ~ N(0, 1 / (H + 1)) from `seed` (not zeros: a zero head would pass no gradient to
    the backbone at the first step), bias 0; float32 whatever the backbone's dtype."""
    head = torch.nn.Linear(hidden_size, 1)
    with torch.no_grad():
        head.weight.copy_(torch.randn(1, hidden_size, generator=torch.Generator().manual_seed(seed))
                          / math.sqrt(hidden_size + 1))
        head.bias.zero_()
    return head


class RewardModel(torch.nn.Module):
    """r(x, y) for every response row of a `collate` batch -> (n_responses x B,) float32 rewards, in the batch's
    row order (all chosen, then all rejected). The head reads the final hidden state of the response's last
    non-pad token (its closing EOS)."""

    def __init__(self, backbone, head: torch.nn.Linear | None = None, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else init_head(text_hidden_size(backbone), seed)

    def forward(self, prompt_ids, prompt_mask, response_ids, response_mask, pixel_values, n_responses: int,
                image_sizes=None) -> torch.Tensor:
        _, hidden = shared_prefix_hidden(self.backbone, prompt_ids, prompt_mask, response_ids, response_mask,
                                         pixel_values, n_responses, image_sizes)
        last = response_mask.sum(-1) - 1
        h = hidden[torch.arange(len(last), device=hidden.device), last]
        return self.head(h.float()).squeeze(-1)


def _backbone_config(cfg: RewardTrainConfig) -> DPOTrainConfig:
    """The trainable-part flags of offline DPO, reused by `prepare_model`."""
    return DPOTrainConfig(lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          lora_target=cfg.lora_target, train_projector=cfg.train_projector, train_vision=False,
                          train_lm=True)


def prepare_reward_model(backbone, cfg: RewardTrainConfig) -> RewardModel:
    """LoRA (or full fine-tuning) on the backbone's LM, the projector by the flag, a fresh trainable head."""
    model = prepare_model(backbone, _backbone_config(cfg))
    llava = unwrap_llava(model)
    if cfg.lora_r == 0 and llava.lm_head.weight is not llava.get_input_embeddings().weight:
        llava.lm_head.requires_grad_(False)          # unused by the RM (an untied LM head gets no gradient)
    return RewardModel(model, seed=cfg.seed)


# ---------------------------------------------------------------- encoding and scoring


def encode_prompts(processor, images: Sequence, prompts: Sequence[str]) -> list[tuple]:
    """(prompt ids with the image tokens expanded, pixel values (1, ...), image sizes or None) of each
    (image, question) example, the question rendered by the chat template."""
    inputs = processor(images=list(images), text=[chat_prompt(processor, p) for p in prompts], return_tensors="pt",
                       padding=True)
    sizes = inputs.get("image_sizes")
    return [(inputs["input_ids"][j][inputs["attention_mask"][j].bool()].tolist(), inputs["pixel_values"][j:j + 1],
             None if sizes is None else sizes[j:j + 1]) for j in range(len(prompts))]


def encode_responses(processor, images: Sequence, prompts: Sequence[str], responses: Sequence[Sequence[str]],
                     ids: Sequence[str]) -> list[EncodedPair]:
    """`collate`-ready examples of prompts with the same number (>= 1) of response texts each (RLOO's k samples,
    a record's chosen answer, ...), each response encoded as `encode_pairs` does: " " + text, then EOS."""
    if not len(images) == len(prompts) == len(responses) == len(ids):
        raise ValueError("encode_responses needs one image, prompt, response list and id per example")
    if len({len(r) for r in responses}) > 1 or any(not r for r in responses):
        raise ValueError("every example needs the same number (>= 1) of responses")
    tok = processor.tokenizer
    encoded = []
    for (prompt_ids, pixels, sizes), texts, i in zip(encode_prompts(processor, images, prompts), responses, ids):
        rows = tok([" " + t.strip() for t in texts], add_special_tokens=False)["input_ids"]
        encoded.append(EncodedPair(str(i), pixels, sizes, prompt_ids, [row + [tok.eos_token_id] for row in rows]))
    return encoded


@torch.no_grad()
def score_responses(rm: RewardModel, processor, images: Sequence, prompts: Sequence[str],
                    responses: Sequence[Sequence[str]], batch_size: int = 16) -> torch.Tensor:
    """Rewards (B, n) of n responses to each of B (image, prompt) examples."""
    device = next(rm.head.parameters()).device
    pad = processor.tokenizer.pad_token_id
    out = []
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        part = encode_responses(processor, images[start:stop], prompts[start:stop], responses[start:stop],
                                [str(i) for i in range(start, min(stop, len(prompts)))])
        values = rm(**collate(part, pad, device))
        out.append(values.view(len(responses[0]), len(part)).T.cpu())
    return torch.cat(out) if out else torch.zeros(0, len(responses[0]) if responses else 0)


@torch.no_grad()
def score_pairs(rm: RewardModel, processor, pairs: Sequence[dict], image_root: str | Path, batch_size: int = 16,
                progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Rewards of every pair's chosen and rejected response ((N,), (N,)); pairs are encoded batch by batch, so
    held-out sets of any size fit in memory. A pair longer than the RM's context is an error naming it."""
    rm.eval()
    device = next(rm.head.parameters()).device
    pad = processor.tokenizer.pad_token_id
    chosen, rejected = [], []
    for start in progress_bar(range(0, len(pairs), batch_size), desc="RM scores", unit="batch", disable=not progress):
        part = list(pairs[start:start + batch_size])
        encoded, _ = encode_pairs(processor, part, image_root, text_max_length(rm.backbone), "error", False)
        values = rm(**collate(encoded, pad, device)).cpu()
        chosen.extend(values[:len(part)].tolist())
        rejected.extend(values[len(part):].tolist())
    return np.array(chosen), np.array(rejected)


def rm_accuracy(rm: RewardModel, processor, pairs: Sequence[dict], image_root: str | Path, batch_size: int = 16,
                n_boot: int = 1000, seed: int = 0, progress: bool = False) -> dict:
    """Pairwise accuracy on held-out `pairs`, overall and per `source` (the paper's Table 7), with 95 % intervals:
    see `pairwise_accuracy`."""
    chosen, rejected = score_pairs(rm, processor, pairs, image_root, batch_size, progress)
    return pairwise_accuracy(chosen, rejected, [p["source"] for p in pairs], n_boot=n_boot, seed=seed)


def accuracy_table(results: dict[str, dict]) -> str:
    """A Markdown table of `rm_accuracy` results keyed by held-out file: a row per source (and "all" when a file
    mixes several)."""
    lines = ["| held-out file | source | pairs | accuracy [95 % CI] | mean margin |", "|---|---|---|---|---|"]
    for name, result in results.items():
        rows = list(result["per_source"].items())
        if len(rows) > 1:
            rows.insert(0, ("all", result["all"]))
        for source, r in rows:
            lines.append(f"| {name} | {source} | {r['n']} | {r['accuracy']:.3f} [{r['low']:.3f}, {r['high']:.3f}] "
                         f"| {r['margin']:.3f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- save / load


def save_reward_model(rm: RewardModel, processor, path: str | Path, extra: dict | None = None) -> Path:
    """Write `rm` as a directory (backbone/ with LoRA merged, head.safetensors, reward_config.json), atomically:
    everything goes to a temp dir beside `path`, renamed onto it once complete. `rm` itself is left as it is."""
    path = Path(path)
    backbone = rm.backbone
    if hasattr(backbone, "merge_and_unload"):
        backbone = copy.deepcopy(backbone).merge_and_unload()
    with io.atomic_dir(path) as tmp:
        save_llava(backbone, processor, tmp / BACKBONE_DIR)
        head = {k: v.detach().float().cpu().contiguous() for k, v in rm.head.state_dict().items()}
        save_file(head, str(tmp / HEAD_FILE))
        io.write_json(tmp / CONFIG_FILE, {"format": FORMAT, "version": 1, "hidden_size": text_hidden_size(backbone),
                                          "token": "last token of prompt + response (the response's closing EOS)",
                                          **(extra or {})})
    logger.info("saved reward model to %s", path)
    return path


def load_reward_model(path: str | Path, device: str | torch.device = "cpu",
                      dtype: torch.dtype | str | None = None) -> tuple[RewardModel, object]:
    """(reward model in eval mode, processor) from a `save_reward_model` directory; DataError naming the path for a
    directory that is not one."""
    path = Path(path)
    for name in (CONFIG_FILE, HEAD_FILE):
        if not (path / name).is_file():
            raise io.DataError(f"{path}: no {name}, so this is not a reward-model directory (expected "
                               f"{BACKBONE_DIR}/, {HEAD_FILE}, {CONFIG_FILE})")
    config = io.read_json(path / CONFIG_FILE)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise io.DataError(f"{path / CONFIG_FILE}: field 'format' is not {FORMAT!r}")
    backbone, processor = load_llava(path / BACKBONE_DIR, device=device, dtype=dtype)
    hidden = text_hidden_size(backbone)
    state = load_file(str(path / HEAD_FILE))
    if set(state) != {"weight", "bias"} or tuple(state["weight"].shape) != (1, hidden):
        raise io.DataError(f"{path / HEAD_FILE}: expected a head 'weight' (1, {hidden}) and 'bias' (1,), got "
                           f"{ {k: tuple(v.shape) for k, v in state.items()} }")
    head = torch.nn.Linear(hidden, 1)
    head.load_state_dict(state)
    rm = RewardModel(backbone, head).to(device).eval()
    rm.requires_grad_(False)
    return rm, processor


# ---------------------------------------------------------------- runs (shared with RLOO)


# ---------------------------------------------------------------- training


def _rm_record(loss, chosen, rejected, step: int, epoch: int, lr: float, pairs: int, seconds: float) -> dict:
    margin = chosen - rejected
    return {"step": step, "epoch": epoch, "loss": float(loss), "accuracy": float((margin > 0).float().mean()),
            "margin": float(margin.mean()), "rewards/chosen": float(chosen.mean()),
            "rewards/rejected": float(rejected.mean()), "lr": lr, "pairs": pairs, "seconds": round(seconds, 3)}


def train_reward_model(model_dir: str | Path, pairs: Sequence[dict], cfg: RewardTrainConfig, out_dir: str | Path,
                       image_root: str | Path, device: str = "cpu", progress: bool = True,
                       stop_after_steps: int | None = None) -> dict:
    """Train a Bradley-Terry RM on `pairs` (mmstudy's schema) from the LLaVA in `model_dir`; saves it to
    `out_dir/rm` and resumes from the last checkpoint in `out_dir/checkpoints`. `stop_after_steps` ends the run
    early (as an interruption would), with a checkpoint and without the final save."""
    from accelerate import Accelerator

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=(device == "cpu"))
    torch.manual_seed(cfg.seed)
    backbone, processor = load_llava(model_dir)
    max_length = cfg.max_length or text_max_length(backbone)
    encoded, skipped = encode_pairs(processor, pairs, image_root, max_length, cfg.on_too_long, need_second=False)
    if not encoded:
        raise ValueError("no pair left to train on")
    rm = prepare_reward_model(backbone, cfg)
    optimizer = torch.optim.AdamW([p for p in rm.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg.schedule, total,
                                                                         int(cfg.warmup_ratio * total)))
    model, optimizer = accelerator.prepare(rm, optimizer)
    identity = run_identity(config=cfg, data=records_digest(pairs), model=io.fingerprint(model_dir),
                            images=io.files_digest(image_root, image_names(pairs)))
    step, _ = resume_run(out, accelerator.unwrap_model(model), optimizer, scheduler, identity)
    pad, world, rank = processor.tokenizer.pad_token_id, accelerator.num_processes, accelerator.process_index
    bar = progress_bar(total=total, initial=step, desc="RM", unit="step", disable=not progress)
    start = time.time()
    while step < total:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        chunk = epoch_order(len(encoded), cfg.seed, epoch)[in_epoch * cfg.batch_size:(in_epoch + 1) * cfg.batch_size]
        batch_pairs = [encoded[i] for i in chunk[rank::world]]
        model.train()
        rewards = model(**collate(batch_pairs, pad, accelerator.device))
        n = len(batch_pairs)
        loss = bradley_terry_loss(rewards[:n], rewards[n:], cfg.center).mean()
        accelerator.backward(loss)
        optimizer_step(accelerator, model, optimizer, scheduler, cfg.max_grad_norm)
        step += 1
        record = _rm_record(loss.detach(), rewards[:n].detach(), rewards[n:].detach(), step, epoch,
                            scheduler.get_last_lr()[0], n * world, time.time() - start)
        stopping = stop_after_steps is not None and stop_after_steps <= step < total
        if accelerator.is_main_process:
            io.append_jsonl(out / "metrics.jsonl", [record])
            if step < total and (stopping or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                save_checkpoint(out, accelerator.unwrap_model(model), optimizer, scheduler, step, identity,
                                cfg.keep_checkpoints)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}")
        if stopping:
            bar.close()
            return {"stopped_at": step, "total_steps": total}
    bar.close()
    summary = {"steps": step, "pairs": len(encoded), "skipped_too_long": skipped, "epochs": cfg.epochs,
               "config": dataclasses.asdict(cfg), "seconds": round(time.time() - start, 3)}
    if accelerator.is_main_process:
        save_reward_model(accelerator.unwrap_model(model), processor, out / "rm",
                          {"base_model": str(model_dir), "train_config": dataclasses.asdict(cfg)})
        io.write_json(out / "train_summary.json", summary)
    return summary
