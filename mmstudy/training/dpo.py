"""Offline preference training (DPO, IPO, SLiC, Avg-DPO) of LLaVA models: a small loop of our own on `accelerate`.

    model      the tiny world LLaVA or any local LLaVA 1.5 / 1.6 checkpoint (`mmstudy.models.llava.load_llava`)
    trainable  LoRA on the language model through peft (rank, alpha, target regex; the paper: r 128, alpha 256),
               or full fine-tuning (`lora_r=0`); the projector trainable at its own learning rate; explicit
               flags for vision tower, projector and language model
    reference  under LoRA the same model with its adapters disabled (no second copy); under full fine-tuning a
               frozen copy; optionally precomputed once per dataset (`precompute_ref`), which removes a forward
               pass per step
    batches    each pair's prompt (image tokens included) runs once; its chosen and rejected (and second
               rejected) responses continue from its KV cache, in forwards of rows of similar length
               (`length_groups`), and the vocabulary's log-softmax is taken at the response tokens only
    lengths    never truncated: a pair longer than `max_length` is an error, or skipped and counted
               (`on_too_long="skip"`); a pair whose chosen and rejected are the same text is dropped and
               counted (`skipped_identical`)
    runs       namespaced metrics per step in metrics.jsonl, checkpoints every `checkpoint_every` steps, exact
               resume from the last one, the result saved as a Hugging Face directory (merged or adapter)

Launch: `mmstudy train-dpo ...` on CPU or one GPU; `accelerate launch -m mmstudy train-dpo ...` on several GPUs
(DDP, or FSDP / DeepSpeed through `accelerate config`). Each process takes its share of every global batch.

    >>> summary = train_dpo("models/base", pairs, DPOTrainConfig(loss="dpo", beta=0.1), "runs/dpo", image_root)
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from peft import LoraConfig, get_peft_model
from transformers import DynamicCache

from mmstudy import io
from mmstudy.models.corruption import NOISE_BETAS, diffusion_noise
from mmstudy.models.generation import cache_keyword, chat_prompt
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
from mmstudy.training.losses import LOSSES, OBJECTIVES, avg_dpo_loss, mdpo_loss
from mmstudy.training.online import summarize_online

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPOTrainConfig:
    loss: str = "dpo"                  # dpo | ipo | slic | avg_dpo | mdpo
    beta: float = 0.1
    label_smoothing: float = 0.0
    gamma: float = 0.5                 # Avg-DPO weight of the first rejected response
    mdpo_noise_steps: int = 500        # mDPO: diffusion steps of the corrupted image (BDHS_noise's schedule)
    mdpo_anchor: float = 0.0           # mDPO: the anchor the chosen reward is kept above
    # Defaults: the default profile's recipe (params/05_offline.yaml, chosen by `mmstudy recipe-grid`); the paper
    # profile overrides them (params/paper/05_offline.yaml: r 128, alpha 256, lr 1e-6, 3 epochs, projector trained)
    lora_r: int = 16                   # 0: full fine-tuning
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target: str = LORA_TARGET_REGEX
    lr: float = 5e-5
    projector_lr: float = 2e-5
    train_vision: bool = False
    train_projector: bool = False
    train_lm: bool = True
    epochs: int = 4
    batch_size: int = 16               # pairs per optimizer step (over all processes)
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int | None = None      # None: the language model's context
    on_too_long: str = "error"         # error | skip
    precompute_ref: bool = False
    checkpoint_every: int = 50         # optimizer steps; 0: only at the end
    keep_checkpoints: int = 2
    merge: bool = True                 # save LoRA merged into the weights (else the adapter beside the base)
    seed: int = 0

    def __post_init__(self):
        if self.loss not in OBJECTIVES:
            raise ValueError(f"unknown loss {self.loss!r}; choose from {list(OBJECTIVES)}")
        if self.on_too_long not in ("error", "skip"):
            raise ValueError(f"on_too_long must be 'error' or 'skip', got {self.on_too_long!r}")
        if self.beta <= 0 or self.lr <= 0 or self.projector_lr <= 0:
            raise ValueError("beta, lr and projector_lr must be > 0")
        if self.epochs < 1 or self.batch_size < 1 or self.lora_r < 0:
            raise ValueError("epochs and batch_size must be >= 1, lora_r >= 0")
        if not 0 < self.mdpo_noise_steps < len(NOISE_BETAS):
            raise ValueError(f"mdpo_noise_steps must be in [1, {len(NOISE_BETAS) - 1}], got {self.mdpo_noise_steps}")
        if not (self.train_vision or self.train_projector or self.train_lm):
            raise ValueError("nothing to train: enable at least one of train_vision, train_projector, train_lm")
        if self.lora_r > 0 and not self.train_lm:
            raise ValueError("LoRA adapts the language model: with train_lm=False use lora_r=0 (full fine-tuning "
                             "of the parts the flags enable)")

    def identity(self) -> dict:
        """The settings a run's checkpoints belong to: every field, but mDPO's only for loss mdpo (so runs of the
        other objectives keep the identity they had before mDPO's settings existed)."""
        settings = dataclasses.asdict(self)
        if self.loss != "mdpo":
            settings = {k: v for k, v in settings.items() if not k.startswith("mdpo_")}
        return settings


# ---------------------------------------------------------------- data


@dataclass
class EncodedPair:
    id: str
    pixel_values: torch.Tensor        # (1, ...) the processor's output for the pair's image
    image_sizes: torch.Tensor | None
    prompt_ids: list[int]             # chat prompt with the image tokens expanded
    responses: list[list[int]]        # chosen, rejected[, rejected_2], each ending with EOS


def encode_pairs(processor, pairs: Sequence[dict], image_root: str | Path, max_length: int,
                 on_too_long: str, need_second: bool, chunk: int = 64) -> tuple[list[EncodedPair], int]:
    """Tokenize every pair once (images and prompts through the processor in chunks); returns (encoded pairs,
    number skipped as too long)."""
    tok = processor.tokenizer
    encoded, skipped = [], 0
    for start in range(0, len(pairs), chunk):
        part = list(enumerate(pairs[start:start + chunk], start=start))
        for i, p in part:
            if need_second and "rejected_2" not in p:
                raise io.DataError(f"pair {i} (id={p['id']!r}): avg_dpo needs field 'rejected_2' (a second rejected "
                                   f"response)")
        images = [io.load_image(Path(image_root) / p["image"], where=f"pair {i} (id={p['id']!r})") for i, p in part]
        inputs = processor(images=images, text=[chat_prompt(processor, p["prompt"]) for _, p in part],
                           return_tensors="pt", padding=True)
        names = ("chosen", "rejected") + (("rejected_2",) if need_second else ())
        texts = [" " + p[name].strip() for _, p in part for name in names]
        response_ids = tok(texts, add_special_tokens=False)["input_ids"]
        for j, (i, p) in enumerate(part):
            prompt_ids = inputs["input_ids"][j][inputs["attention_mask"][j].bool()].tolist()
            responses = [ids + [tok.eos_token_id] for ids in response_ids[j * len(names):(j + 1) * len(names)]]
            longest = len(prompt_ids) + max(map(len, responses))
            if longest > max_length:
                if on_too_long == "error":
                    raise io.DataError(f"pair {i} (id={p['id']!r}): {longest} tokens (prompt and image "
                                       f"{len(prompt_ids)}) exceed max_length={max_length}; raise it or pass "
                                       f"on_too_long='skip'")
                skipped += 1
                continue
            sizes = inputs.get("image_sizes")
            encoded.append(EncodedPair(str(p["id"]), inputs["pixel_values"][j:j + 1],
                                       None if sizes is None else sizes[j:j + 1], prompt_ids, responses))
    if skipped:
        logger.warning("skipped %d of %d pairs longer than max_length=%d", skipped, len(pairs), max_length)
    return encoded, skipped


def collate(batch: Sequence[EncodedPair], pad_id: int, device=None) -> dict:
    """One left-padded prompt row per pair (image tokens included) and right-padded response rows: all chosen,
    then all rejected (then all second rejected), each response ending with EOS. Pixel values once per pair. With
    `device`, the tensors are moved there."""
    n_resp = len(batch[0].responses)
    width = max(len(p.prompt_ids) for p in batch)
    prompt_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, p in enumerate(batch):
        prompt_ids[r, width - len(p.prompt_ids):] = torch.tensor(p.prompt_ids)
        prompt_mask[r, width - len(p.prompt_ids):] = 1
    rows = [p.responses[k] for k in range(n_resp) for p in batch]
    length = max(map(len, rows))
    response_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for r, row in enumerate(rows):
        response_ids[r, :len(row)] = torch.tensor(row)
        response_mask[r, :len(row)] = 1
    out = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "response_ids": response_ids,
           "response_mask": response_mask, "n_responses": n_resp,
           "pixel_values": torch.cat([p.pixel_values for p in batch])}
    if batch[0].image_sizes is not None:
        out["image_sizes"] = torch.cat([p.image_sizes for p in batch])
    if device is not None:
        out = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    return out


# ---------------------------------------------------------------- the model side


def unwrap_llava(model):
    """The LLaVA inside a peft wrapper (LoRA layers are injected in place), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def text_hidden_size(model) -> int:
    config = unwrap_llava(model).config
    return int(getattr(config, "text_config", config).hidden_size)


def text_max_length(model) -> int:
    config = unwrap_llava(model).config
    return int(getattr(config, "text_config", config).max_position_embeddings)


RESPONSE_GROUPS = 4   # response rows run in up to this many length groups (`length_groups`)


def length_groups(lengths: Sequence[int], max_groups: int = RESPONSE_GROUPS) -> list[list[int]]:
    """Rows (indices into `lengths`) split into at most `max_groups` groups of similar length so that the padded
    tokens, sum over groups of (rows x the group's longest), are fewest: an exact dynamic programme over the rows
    sorted by (length, index). Groups come shortest first, each in that order; the fewest groups win a tie."""
    if max_groups < 1:
        raise ValueError(f"max_groups must be >= 1, got {max_groups}")
    order = sorted(range(len(lengths)), key=lambda r: (lengths[r], r))
    size = [lengths[r] for r in order]
    n, inf = len(order), float("inf")
    cost = [[0.0] + [inf] * n]            # cost[k][j]: fewest padded tokens of the first j sorted rows in k groups
    start: list[list[int]] = [[0] * (n + 1)]
    for k in range(1, max_groups + 1):
        row, cut = [inf] * (n + 1), [0] * (n + 1)
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                c = cost[k - 1][i] + (j - i) * size[j - 1]
                if c < row[j]:
                    row[j], cut[j] = c, i
        cost.append(row)
        start.append(cut)
    best = min(range(1, max_groups + 1), key=lambda k: (cost[k][n], k)) if n else 0
    groups, j = [], n
    for k in range(best, 0, -1):
        i = start[k][j]
        groups.append(order[i:j])
        j = i
    return groups[::-1]


def shared_prefix_hidden(model, prompt_ids, prompt_mask, response_ids, response_mask, pixel_values, n_responses: int,
                         image_sizes=None, groups: int = RESPONSE_GROUPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states of `collate` batches: the prompt rows (B, P) (left-padded, image tokens included) run
    once through the LLaVA's own forward, which encodes and places the image features (LLaVA-NeXT's AnyRes
    included); the n_responses x B response rows (right-padded; all first responses, then all second, ...) continue
    from the prompt's KV cache, in up to `groups` forwards of rows of similar length (`length_groups`: a batch of
    short answers and long descriptions is not padded to its longest row). Returns (hidden of each prompt's last
    token (B, H), response hiddens (nB, L, H), 0 at padding), after the LM's final norm. `model` is a LLaVA, bare
    or wrapped by peft."""
    if len(response_ids) != n_responses * len(prompt_ids):
        raise ValueError(f"{len(response_ids)} response rows for {len(prompt_ids)} prompts and n_responses="
                         f"{n_responses}: expected {n_responses * len(prompt_ids)}")
    llava = unwrap_llava(model)
    name = cache_keyword(llava.model)
    kwargs = {"image_sizes": image_sizes} if image_sizes is not None else {}
    prompt = llava.model(input_ids=prompt_ids, pixel_values=pixel_values.to(llava.dtype), attention_mask=prompt_mask,
                         position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, **kwargs)
    cache = prompt[name] if name in prompt else prompt["past_key_values"]
    lengths = response_mask.sum(-1)
    width = response_ids.shape[1]
    parts, placed = [], []
    for rows in length_groups(lengths.tolist(), groups):
        index = torch.tensor(rows, device=response_ids.device)
        source = index % prompt_ids.shape[0]            # the prompt row each response continues
        longest = int(lengths[index].max())
        shared = DynamicCache()
        for i, layer in enumerate(cache.layers):
            shared.update(layer.keys[source], layer.values[source], i)
        positions = prompt_mask[source].sum(-1, keepdim=True) + torch.arange(longest, device=response_ids.device)
        attention = torch.cat([prompt_mask[source], response_mask[index, :longest]], dim=1)
        out = llava.model(input_ids=response_ids[index, :longest], attention_mask=attention, position_ids=positions,
                          use_cache=True, **{name: shared})
        parts.append(torch.nn.functional.pad(out.last_hidden_state, (0, 0, 0, width - longest)))
        placed.extend(rows)
    hidden = torch.cat(parts)[torch.argsort(torch.tensor(placed, device=response_ids.device))]
    return prompt.last_hidden_state[:, -1], hidden * response_mask[..., None].to(hidden.dtype)


def predicting_hidden(last: torch.Tensor, hidden: torch.Tensor, n_responses: int) -> torch.Tensor:
    """The hidden state that predicts each response token (nB, L, H), from `shared_prefix_hidden`'s outputs: the
    prompt's last position for token 0, response position t - 1 for token t."""
    return torch.cat([last[:, None].repeat(n_responses, 1, 1), hidden[:, :-1]], dim=1)


class PairScorer(torch.nn.Module):
    """Summed response log-probs of every response row of a batch. The prompt of a pair (its image tokens
    included) runs once: its image is encoded once, and its chosen and rejected responses both continue from its
    KV cache, gradients flowing through the shared prefix (`shared_prefix_hidden`). Log-probs are those of
    softmax(logits / temperature) (1 for DPO; RLOO's sampling temperature). Wrapping this module (not the bare
    model) is what accelerate prepares, so DDP sees the whole computation."""

    def __init__(self, model, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, prompt_ids, prompt_mask, response_ids, response_mask, pixel_values, n_responses: int,
                image_sizes=None) -> torch.Tensor:
        h = predicting_hidden(*shared_prefix_hidden(self.model, prompt_ids, prompt_mask, response_ids, response_mask,
                                                    pixel_values, n_responses, image_sizes), n_responses)
        real = response_mask.bool()            # the vocabulary's log-softmax at the response tokens only
        logits = unwrap_llava(self.model).lm_head(h[real]).float() / self.temperature
        token = torch.log_softmax(logits, dim=-1).gather(-1, response_ids[real].unsqueeze(-1)).squeeze(-1)
        row = torch.arange(len(response_ids), device=token.device)[:, None].expand_as(real)[real]
        return torch.zeros(len(response_ids), device=token.device, dtype=token.dtype).index_add(0, row, token)


def response_log_probs(model, prompt_ids, prompt_mask, response_ids, response_mask, pixel_values, n_responses: int,
                       image_sizes=None, temperature: float = 1.0) -> torch.Tensor:
    """Next-token log-probs (nB, L, V) at every position of the response rows of a `collate` batch: token 0 of a
    response is predicted by the prompt's last position, token t by response position t - 1."""
    h = predicting_hidden(*shared_prefix_hidden(model, prompt_ids, prompt_mask, response_ids, response_mask,
                                                pixel_values, n_responses, image_sizes), n_responses)
    return torch.log_softmax(unwrap_llava(model).lm_head(h).float() / temperature, dim=-1)


def prepare_model(model, cfg: DPOTrainConfig):
    """Freeze / unfreeze by the flags, add LoRA when lora_r > 0; returns the model to train."""
    model.requires_grad_(False)
    if cfg.lora_r > 0:
        keep = [m for m, on in (("multi_modal_projector", cfg.train_projector), ("vision_tower", cfg.train_vision))
                if on]
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.lora_target, modules_to_save=keep or None)
        return get_peft_model(model, lora)
    llava = model.model
    for module, on in ((llava.vision_tower, cfg.train_vision), (llava.multi_modal_projector, cfg.train_projector),
                       (llava.language_model, cfg.train_lm), (model.lm_head, cfg.train_lm)):
        module.requires_grad_(on)
    return model


def _param_groups(model, cfg: DPOTrainConfig) -> list[dict]:
    projector, other = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (projector if "multi_modal_projector" in name else other).append(p)
    groups = [{"params": other, "lr": cfg.lr}] if other else []
    if projector:
        groups.append({"params": projector, "lr": cfg.projector_lr})
    return groups


# ---------------------------------------------------------------- the loop


def corrupted_view(batch: dict, ids: Sequence[str], steps: int, seed: int) -> dict:
    """mDPO's second view of a `collate` batch: each pair's prompt with its image under the diffusion noise of
    `steps` steps, drawn with the seed (seed, "mdpo", pair id) so that every epoch and the reference see the same
    corruption, and its chosen response only."""
    n = len(ids)
    pixels = batch["pixel_values"]
    noisy = torch.stack([diffusion_noise(pixels[b], steps, derive_seed(seed, "mdpo", ids[b])) for b in range(n)])
    return {**batch, "pixel_values": noisy, "response_ids": batch["response_ids"][:n],
            "response_mask": batch["response_mask"][:n], "n_responses": 1}


def _corrupt_ids(ids: Sequence[str]) -> list[str]:
    """The reference cache's keys of the pairs' corrupted views."""
    return [f"{i}#corrupt" for i in ids]


def _objective(cfg: DPOTrainConfig, policy: torch.Tensor, ref: torch.Tensor, n_pairs: int,
               corrupt: tuple[torch.Tensor, torch.Tensor] | None = None):
    pc, pr = policy[:n_pairs], policy[n_pairs:2 * n_pairs]
    rc, rr = ref[:n_pairs], ref[n_pairs:2 * n_pairs]
    if cfg.loss == "mdpo":
        return mdpo_loss(pc, pr, corrupt[0], rc, rr, corrupt[1], beta=cfg.beta, anchor=cfg.mdpo_anchor)
    if cfg.loss == "avg_dpo":
        return avg_dpo_loss(pc, pr, policy[2 * n_pairs:], rc, rr, ref[2 * n_pairs:], beta=cfg.beta, gamma=cfg.gamma,
                            label_smoothing=cfg.label_smoothing)
    return LOSSES[cfg.loss](pc, pr, rc, rr, beta=cfg.beta, label_smoothing=cfg.label_smoothing)


class _Reference:
    """Reference log-probs: precomputed per pair id, or computed on the fly (adapters disabled / frozen copy)."""

    def __init__(self, scorer: PairScorer, frozen: PairScorer | None, cache: dict[str, list[float]] | None):
        self.scorer, self.frozen, self.cache = scorer, frozen, cache

    @torch.no_grad()
    def __call__(self, batch: dict, ids: list[str], device) -> torch.Tensor:
        if self.cache is not None:
            n = batch["n_responses"]
            return torch.tensor([self.cache[i][k] for k in range(n) for i in ids], device=device)
        if self.frozen is not None:
            return self.frozen(**batch)
        model = _llava_unwrapped(self.scorer)
        if not hasattr(model, "disable_adapter"):   # full fine-tuning, precomputing before the first step
            return self.scorer(**batch)
        with model.disable_adapter():
            return self.scorer(**batch)


def _llava_unwrapped(scorer):
    module = scorer.module if hasattr(scorer, "module") else scorer
    return module.model


def _online_batch(online, step: int, records: list[dict], scorer, processor, image_root, max_length: int,
                  cfg: DPOTrainConfig, need_second: bool) -> tuple[list[EncodedPair], dict]:
    """This step's pairs from the current policy (generation in eval mode, no gradients), encoded."""
    policy = _llava_unwrapped(scorer)
    policy.eval()
    made, stats = online.make(step, records, policy, processor)
    if not made:
        return [], stats
    encoded, skipped = encode_pairs(processor, made, image_root, max_length, cfg.on_too_long, need_second)
    if skipped:
        stats["online/too_long"] = skipped
    return encoded, stats


def train_dpo(model_dir: str | Path, pairs: Sequence[dict], cfg: DPOTrainConfig, out_dir: str | Path,
              image_root: str | Path, device: str = "cpu", progress: bool = True,
              stop_after_steps: int | None = None, online=None) -> dict:
    """Train on `pairs` (mmstudy's preference schema) and save the model to `out_dir/model`; resumes from the
    last checkpoint in `out_dir/checkpoints`. `stop_after_steps` ends the run early (as an interruption would,
    after that many optimizer steps) without saving the final model: for tests and time-boxed runs.

    With `online` (a `mmstudy.training.online.OnlinePairs`), each step's records are turned into pairs by the current
    policy (Online-DPO, Mixed-DPO, Online-BDHS) before the same loss and update; a step left without pairs (judge
    failures, identical samples) still steps the schedule, with a zero loss."""
    from accelerate import Accelerator

    if online is not None and online.cfg.needs_second_rejected and cfg.loss != "avg_dpo":
        raise ValueError(f"online mode {online.cfg.mode!r} trains with loss avg_dpo (two rejected responses)")
    if online is not None and cfg.loss == "avg_dpo" and not online.cfg.needs_second_rejected:
        raise ValueError(f"loss avg_dpo needs two rejected responses: online mode {online.cfg.mode!r} makes one")
    if online is not None and cfg.precompute_ref:
        raise ValueError("online pairs change with the policy: precompute_ref is for offline data only")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=(device == "cpu"))
    torch.manual_seed(cfg.seed)
    model, processor = load_llava(model_dir)
    setup_start = time.time()
    max_length = cfg.max_length or text_max_length(model)
    need_second = cfg.loss == "avg_dpo"
    identical = 0
    if online is None:
        kept = [p for p in pairs if p["chosen"].strip() != p["rejected"].strip()]
        identical = len(pairs) - len(kept)
        if identical:
            logger.warning("dropped %d of %d pairs whose chosen and rejected responses are the same text (nothing "
                           "to prefer)", identical, len(pairs))
        encoded, skipped = encode_pairs(processor, kept, image_root, max_length, cfg.on_too_long, need_second)
    else:
        encoded, skipped = list(pairs), 0      # records: their pairs are made step by step
    if not encoded:
        raise ValueError("no pair left to train on")
    identity = run_identity(config=cfg.identity(), online=None if online is None else online.identity(),
                            data=records_digest(pairs), model=io.fingerprint(model_dir),
                            images=io.files_digest(image_root, image_names(pairs)))
    frozen = None
    if cfg.lora_r == 0 and not cfg.precompute_ref:
        frozen = PairScorer(copy.deepcopy(model).requires_grad_(False).eval()).to(accelerator.device)
    model = prepare_model(model, cfg)
    scorer = PairScorer(model)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    world = accelerator.num_processes
    steps_per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_ratio * total_steps)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule("linear", total_steps, warmup))
    scorer, optimizer = accelerator.prepare(scorer, optimizer)
    pad_id = processor.tokenizer.pad_token_id
    ref_cache = None
    if cfg.precompute_ref:  # before any checkpoint is loaded: the weights are still the reference's
        ref_cache = _reference_cache(out, scorer, frozen, encoded, pad_id, cfg, accelerator.device,
                                      settings_hash(identity))
    reference = _Reference(scorer, frozen, ref_cache)
    step, extra = resume_run(out, _llava_unwrapped(scorer), optimizer, scheduler, identity)
    online_totals = Counter()
    if online is not None and extra is not None:
        online.load_state_dict(extra["source"])
        online_totals.update(extra["totals"])
    metrics_path = out / "metrics.jsonl"
    bar = progress_bar(total=total_steps, initial=step, desc="DPO", unit="step", disable=not progress)
    start_time = time.time()
    setup_seconds = round(start_time - setup_start, 3)   # encoding the pairs (and the reference cache)
    while step < total_steps:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        order = epoch_order(len(encoded), cfg.seed, epoch)
        chunk = order[in_epoch * cfg.batch_size:(in_epoch + 1) * cfg.batch_size]
        mine = chunk[accelerator.process_index::world]
        if online is None:
            batch_pairs = [encoded[i] for i in mine]
        else:
            batch_pairs, stats = _online_batch(online, step, [encoded[i] for i in mine], scorer, processor,
                                               image_root, max_length, cfg, need_second)
            online_totals.update(stats)
        n = len(batch_pairs)
        record = {"step": step + 1, "epoch": epoch}
        scorer.train()
        if n:
            batch = collate(batch_pairs, pad_id, accelerator.device)
            ids = [p.id for p in batch_pairs]
            policy = scorer(**batch)
            ref = reference(batch, ids, accelerator.device)
            corrupt = None
            if cfg.loss == "mdpo":
                view = corrupted_view(batch, ids, cfg.mdpo_noise_steps, cfg.seed)
                corrupt = (scorer(**view), reference(view, _corrupt_ids(ids), accelerator.device))
            loss, reward_chosen, reward_rejected = _objective(cfg, policy, ref, n, corrupt)
            loss = loss.mean()
            record.update({"rewards/chosen": float(reward_chosen.mean()),
                           "rewards/rejected": float(reward_rejected.mean()),
                           "rewards/margins": float((reward_chosen - reward_rejected).mean()),
                           "rewards/accuracies": float((reward_chosen > reward_rejected).float().mean()),
                           "logps/chosen": policy[:n].detach().mean().item(),
                           "logps/rejected": policy[n:2 * n].detach().mean().item()})
        else:   # nothing to learn from this step (online: judge failures, identical samples); keep in step
            loss = sum(p.sum() for p in scorer.parameters() if p.requires_grad) * 0.0
        accelerator.backward(loss)
        optimizer_step(accelerator, scorer, optimizer, scheduler, cfg.max_grad_norm)
        step += 1
        record.update({"loss": loss.detach().item(), "lr": scheduler.get_last_lr()[0], "pairs": n * world,
                       "seconds": round(time.time() - start_time, 3)})
        if online is not None:
            record.update(stats)
        stopping = stop_after_steps is not None and step >= stop_after_steps and step < total_steps
        if accelerator.is_main_process:
            io.append_jsonl(metrics_path, [record])
            if stopping or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps):
                save_checkpoint(out, _llava_unwrapped(scorer), optimizer, scheduler, step, identity,
                                cfg.keep_checkpoints, None if online is None else
                                {"source": online.state_dict(), "totals": dict(online_totals)})
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record.get('rewards/accuracies', float('nan')):.2f}")
        if stopping:
            bar.close()
            return {"stopped_at": step, "total_steps": total_steps}
    bar.close()
    summary = {"steps": step, "pairs": len(encoded), "skipped_too_long": skipped, "skipped_identical": identical,
               "epochs": cfg.epochs,
               "config": dataclasses.asdict(cfg), "seconds": round(time.time() - start_time, 3),
               "setup_seconds": setup_seconds}
    if online is not None:
        summary.update({"online": summarize_online(online_totals), "online_config": dataclasses.asdict(online.cfg)})
    if accelerator.is_main_process:
        _save_final(_llava_unwrapped(scorer), processor, out / "model", cfg)
        io.write_json(out / "train_summary.json", summary)
    return summary


def _save_final(model, processor, path: Path, cfg: DPOTrainConfig) -> None:
    if cfg.lora_r > 0 and cfg.merge:
        save_llava(copy.deepcopy(model).merge_and_unload(), processor, path)
    elif cfg.lora_r > 0:
        with io.atomic_dir(path) as tmp:        # the adapter: replaces an earlier run's folder only when whole
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
    else:
        save_llava(model, processor, path)


@torch.no_grad()
def _reference_cache(out: Path, scorer, frozen, encoded: list[EncodedPair], pad_id: int, cfg: DPOTrainConfig,
                     device, run_hash: str) -> dict[str, list[float]]:
    """Reference log-probs of every pair, computed once and kept in out/ref_logps.json (reused on resume)."""
    path = out / "ref_logps.json"
    if path.is_file():
        cached = io.read_json(path)
        if cached.get("config_hash") == run_hash and set(cached["logps"]) >= {p.id for p in encoded}:
            return cached["logps"]
    reference = _Reference(scorer, frozen, None)
    logps: dict[str, list[float]] = {}
    for start in range(0, len(encoded), 4 * cfg.batch_size):   # no gradients: larger batches
        chunk = encoded[start:start + 4 * cfg.batch_size]
        batch = collate(chunk, pad_id, device)
        ids = [p.id for p in chunk]
        values = reference(batch, ids, device).tolist()
        n = len(chunk)
        for j, p in enumerate(chunk):
            logps[p.id] = [values[k * n + j] for k in range(batch["n_responses"])]
        if cfg.loss == "mdpo":
            view = corrupted_view(batch, ids, cfg.mdpo_noise_steps, cfg.seed)
            keys = _corrupt_ids(ids)
            logps |= {key: [v] for key, v in zip(keys, reference(view, keys, device).tolist())}
    io.write_json(path, {"config_hash": run_hash, "logps": logps})
    return logps
