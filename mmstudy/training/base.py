"""Staged base training of the tiny world LLaVA, following LLaVA's recipe at toy scale.

A from-scratch LLaVA trained end to end does not look at its image, and one trained only on image-conditioned text
has no language prior to fall back on when its image is masked (docs/world.md, "The base model and its recipe").
So, like LLaVA:

1. `language`: pretrain the LM on the world's text alone (the Vicuna analog; this is where the co-occurrence prior
   lives);
2. `vision`: pretrain the vision tower to classify what each grid cell holds and how large it is (the CLIP analog);
3. `projector`: freeze the tower and align the projector so each image token lands near the LM's word embedding
   of the object (and size) it shows (LLaVA's stage-1 feature alignment);
4. `instruct`: freeze tower and projector, instruction-tune the LM on LLaVA-format conversations, with
   image-attention dropout (a share of examples see almost none of their image tokens) so the LM keeps a fluent
   prior that BDHS can sample from. With `per_image`, the conversations of one image share one copy of its
   opening and image tokens, each still seeing only the image and itself (`pack_units`; docs/world.md, "A base
   in 7 minutes?").

    >>> model, processor, report = train_base("world", BaseTrainConfig.for_profile("smoke"))
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmstudy import io
from mmstudy.data.llava import conversation_turns, load_llava_instruct
from mmstudy.models.llava import (
    ASSISTANT_TOKEN,
    USER_TOKEN,
    TinyLlavaConfig,
    build_processor,
    build_tiny_llava,
    build_tokenizer,
)
from mmstudy.progress import progress_bar
from mmstudy.runs import cpu_threads, derive_seed, set_seed
from mmstudy.training.checkpoints import run_identity
from mmstudy.world.layout import load_scenes, load_world_info
from mmstudy.world.scene import CLASSES, cell_labels
from mmstudy.world.text import vocabulary_text

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
STAGES = ("language", "vision", "projector", "instruct")


@dataclass
class StageConfig:
    steps: int               # optimizer steps (0 skips the stage)
    batch_size: int          # examples per step
    lr: float                # peak AdamW learning rate (5 % linear warm-up, then cosine to 10 %)

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"stage needs steps >= 0, batch_size >= 1, lr > 0; got {self}")


@dataclass
class BaseTrainConfig:
    """How the base model is trained; `for_profile` gives the shipped profiles."""

    seed: int = 0                                                     # one seed reproduces the run
    model: TinyLlavaConfig = dataclasses.field(default_factory=TinyLlavaConfig)
    language: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(800, 32, 1e-3))
    vision: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(1000, 64, 1e-3))
    projector: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(300, 64, 1e-3))
    instruct: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(1600, 16, 1e-3))
    align_temperature: float = 0.1   # cosine-logit temperature of the projector alignment
    p_blind: float = 0.1             # share of instruct examples whose image tokens are (almost) all masked
    blind_keep_max: float = 0.1      # a blind example keeps each image token with prob ~ U(0, blind_keep_max)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    pack_width: int = 160            # text stages pack a batch's sequences into rows of max(this, longest) positions
    per_image: bool = False          # instruct: an image's conversations share its image tokens (read once, each
                                     # conversation masked to the image and itself); instruct.batch_size counts images
    threads: int = 0                 # torch CPU threads; 0: OMP_NUM_THREADS, else the cores allowed (runs.cpu_threads)

    def __post_init__(self):
        if not 0 <= self.p_blind <= 1 or not 0 <= self.blind_keep_max <= 1:
            raise ValueError("p_blind and blind_keep_max must be probabilities")
        if self.pack_width < 0:
            raise ValueError(f"pack_width must be >= 0 (0: rows as long as the batch's longest), "
                             f"got {self.pack_width}")
        if self.align_temperature <= 0:
            raise ValueError("align_temperature must be > 0")

    @classmethod
    def for_profile(cls, profile: str, **overrides) -> "BaseTrainConfig":
        if profile == "default":
            return cls(**overrides)
        if profile == "smoke":
            small = dict(
                model=TinyLlavaConfig(vision_hidden=64, text_hidden=64, text_layers=2),
                language=StageConfig(20, 16, 2e-3), vision=StageConfig(20, 16, 2e-3),
                projector=StageConfig(10, 16, 2e-3), instruct=StageConfig(30, 8, 2e-3),
            )
            return cls(**{**small, **overrides})
        raise ValueError(f"unknown base-training profile {profile!r}; choose 'smoke' or 'default'")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- data ------------------------------------------------------------------------------------------------------

def tokenize_turns(tokenizer, turns: list[tuple[str, str]], n_image_tokens: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of a conversation rendered exactly as the chat template renders it.

    `<s>USER: <image>*n q ASSISTANT: a </s>USER: q2 ASSISTANT: a2 </s>`; labels cover the answers and their `</s>`.
    """
    ids_of = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    user, assistant = tokenizer.convert_tokens_to_ids([USER_TOKEN, ASSISTANT_TOKEN])
    image = tokenizer.convert_tokens_to_ids(tokenizer.image_token)
    ids, labels = [tokenizer.bos_token_id], [IGNORE_INDEX]
    for k, (q, a) in enumerate(turns):
        prompt = [user] + ([image] * n_image_tokens if k == 0 else []) + ids_of(q) + [assistant]
        answer = ids_of(a) + [tokenizer.eos_token_id]
        ids += prompt + answer
        labels += [IGNORE_INDEX] * len(prompt) + answer
    return ids, labels


def image_sequences(records: list[dict]) -> list[list[int]]:
    """Indices of `records` grouped by their image, in the order each image first appears: the conversations that
    share one copy of their image tokens with `per_image`."""
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(record["image"], []).append(i)
    return list(groups.values())


def load_images_uint8(world_dir: Path, names: list[str], progress: bool) -> torch.Tensor:
    """All images as one uint8 tensor (N, 3, S, S): a 20k-image world is 140 MB."""
    arrays = [np.asarray(io.load_image(world_dir / "images" / n, where=n))
              for n in progress_bar(names, desc="load images", disable=not progress, unit="img")]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B,3,S,S) -> the processor's pixel values: rescale 1/255, mean 0.5, std 0.5 (tested equal)."""
    return images.float().div(255.0).sub(0.5).div(0.5)


def pad_batch(seqs: list[list[int]], labels: list[list[int]], pad_id: int) -> dict:
    """Right-pad a batch for training: input_ids, labels, attention_mask, position_ids, all (B, T)."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id)
    lab = torch.full((len(seqs), width), IGNORE_INDEX)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (seq, target) in enumerate(zip(seqs, labels)):
        ids[i, :len(seq)], lab[i, :len(target)], mask[i, :len(seq)] = torch.tensor(seq), torch.tensor(target), 1
    positions = torch.arange(width).expand(len(seqs), -1).clone()
    return {"input_ids": ids, "labels": lab, "attention_mask": mask, "position_ids": positions}


def pack_rows(lengths: list[int], width: int = 0) -> list[list[int]]:
    """First-fit decreasing: the batch's sequences (by index) in rows of max(width, longest) positions."""
    width, rows, room = max(width, *lengths), [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r in range(len(rows)) if room[r] >= lengths[i]), len(rows))
        if r == len(rows):
            rows.append([])
            room.append(width)
        rows[r].append(i)
        room[r] -= lengths[i]
    return rows


def pack_batch(seqs: list[list[int]], labels: list[list[int]], pad_id: int,
               width: int = 0) -> tuple[dict, torch.Tensor, list[int]]:
    """The batch `pad_batch` makes, packed: several sequences share a row (`pack_rows`), each with its own
    positions, and a 4-D mask lets a token see only the earlier tokens of its own sequence. The same loss (a mean
    over the batch's label tokens) on about 1.2-1.6x fewer positions. Every sequence's first label must be
    IGNORE_INDEX, so that no position learns to predict the next sequence's first token.

    Returns the model inputs (input_ids, labels, position_ids; attention_mask (R, 1, W, W), True = may attend),
    `sequence` (R, W): the batch index of the sequence at each position, -1 on padding, and the batch indices in
    the order the rows hold them (the order of their images)."""
    return pack_units([([], [(s, t)]) for s, t in zip(seqs, labels)], pad_id, width)


Unit = tuple[list[int], list[tuple[list[int], list[int]]]]   # (shared prefix ids, [(part ids, part labels), ...])


def pack_units(units: list[Unit], pad_id: int, width: int = 0) -> tuple[dict, torch.Tensor, list[int]]:
    """`pack_batch` for sequences that share a prefix: unit i stands for the sequences prefix + part for each of
    its parts. The prefix is laid out once, then the parts one after another, each part positioned as if it
    followed the prefix directly and masked to see only the prefix and its own earlier tokens. So every part gets
    the logits and loss it would get as the separate sequence prefix + part, and the prefix is computed once (its
    labels are ignored). Every part's first label must be IGNORE_INDEX. Returns what `pack_batch` returns, with
    `sequence` and the order counting units."""
    if any(not part or target[0] != IGNORE_INDEX for _, parts in units for part, target in parts):
        raise ValueError("pack_batch: every sequence's first label must be IGNORE_INDEX")
    lengths = [len(prefix) + sum(len(part) for part, _ in parts) for prefix, parts in units]
    width = max(width, *lengths)
    rows = pack_rows(lengths, width)
    ids = torch.full((len(rows), width), pad_id)
    lab = torch.full((len(rows), width), IGNORE_INDEX)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    sequence = torch.full((len(rows), width), -1)
    branch = torch.zeros((len(rows), width), dtype=torch.long)   # -1 on a prefix, else the part's index
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            prefix, parts = units[i]
            p = len(prefix)
            ids[r, at:at + p] = torch.tensor(prefix, dtype=torch.long)
            positions[r, at:at + p], sequence[r, at:at + p], branch[r, at:at + p] = torch.arange(p), i, -1
            at += p
            for k, (part, target) in enumerate(parts):
                n = len(part)
                ids[r, at:at + n], lab[r, at:at + n] = torch.tensor(part), torch.tensor(target)
                positions[r, at:at + n], sequence[r, at:at + n], branch[r, at:at + n] = torch.arange(p, p + n), i, k
                at += n
        positions[r, at:] = torch.arange(width - at)   # the padding is one more (ignored) sequence
    block = sequence.masked_fill(sequence < 0, len(units))
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = (block[:, :, None] == block[:, None, :]) & causal & \
        ((branch[:, :, None] == branch[:, None, :]) | (branch[:, None, :] < 0))
    batch = {"input_ids": ids, "labels": lab, "attention_mask": mask[:, None], "position_ids": positions}
    return batch, sequence, [i for members in rows for i in members]


def shared_image_unit(encoded: list[tuple[list[int], list[int]]], prefix_len: int) -> Unit:
    """The conversations of one image (ids and labels from `tokenize_turns`) as one unit of `pack_units`: their
    common opening of `prefix_len` tokens (`<s>USER: <image>*n`, no labels) is the prefix, the rest of each
    conversation a part (with `prefix_len` 0, each conversation is a sequence of its own)."""
    prefix, unlabelled = encoded[0][0][:prefix_len], [IGNORE_INDEX] * prefix_len
    if any(ids[:prefix_len] != prefix or labels[:prefix_len] != unlabelled for ids, labels in encoded):
        raise ValueError(f"the conversations of one image must open with the same {prefix_len} unlabelled tokens")
    return prefix, [(ids[prefix_len:], labels[prefix_len:]) for ids, labels in encoded]


# --- optimisation helpers --------------------------------------------------------------------------------------

def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _batches(n: int, batch_size: int, steps: int, seed: int):
    """`steps` batches of indices into range(n), epoch-wise permutations from a seeded generator (an epoch's tail
    shorter than a batch is dropped)."""
    g = torch.Generator().manual_seed(seed)
    done = 0
    while True:
        for idx in torch.randperm(n, generator=g)[:n - n % batch_size].view(-1, batch_size):
            if done == steps:
                return
            yield idx
            done += 1


def _run_stage(name: str, params: list, stage: StageConfig, cfg: BaseTrainConfig, n: int, step_fn,
               progress: bool) -> dict:
    """The shared loop: AdamW, warm-up + cosine, grad clipping, a progress bar; step_fn(idx) -> (loss, metrics)."""
    opt = torch.optim.AdamW(params, lr=stage.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, stage.steps))
    start, history = time.time(), []
    batches = _batches(n, min(stage.batch_size, n), stage.steps, derive_seed(cfg.seed, name))
    bar = progress_bar(batches, total=stage.steps, desc=f"stage {name}", disable=not progress)
    log_every = max(1, stage.steps // 10)
    for step, idx in enumerate(bar):
        loss, metrics = step_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        history.append({"loss": loss.item(), **metrics})
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % log_every == 0:
            recent = history[-log_every:]
            logger.info("stage %s step %d/%d: %s (%.0f s)", name, step + 1, stage.steps, ", ".join(
                f"{k} {np.mean([h[k] for h in recent]):.4f}" for k in recent[0]), time.time() - start)
    tail = history[-max(1, len(history) // 10):]
    report = {"stage": name, "steps": stage.steps, "seconds": round(time.time() - start, 1)}
    report.update({f"final_{k}": round(float(np.mean([h[k] for h in tail])), 4) for k in (tail[0] if tail else {})})
    logger.info("stage %s done: %s", name, report)
    return report


def _set_trainable(model, *modules) -> list:
    for p in model.parameters():
        p.requires_grad_(False)
    params = {}
    for m in modules:
        for p in m.parameters():  # tied weights (embeddings = lm_head) are listed once
            p.requires_grad_(True)
            params[id(p)] = p
    return list(params.values())


# --- the four stages ---------------------------------------------------------------------------------------------

def _token_cell_labels(scenes, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image token (row-major over a grid x grid patch layout): class label and size label of its cell."""
    rows = torch.arange(grid).repeat_interleave(grid)
    cols = torch.arange(grid).repeat(grid)
    cell_of_token = (rows * 3 // grid) * 3 + cols * 3 // grid
    classes, sizes = zip(*(cell_labels(s) for s in scenes))
    return torch.tensor(classes)[:, cell_of_token], torch.tensor(sizes)[:, cell_of_token]


def _vision_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Image-token features of the vision tower, (B, n_img, H_vision): layer -1, CLS dropped ("default")."""
    out = model.model.vision_tower(pixel_values, output_hidden_states=True)
    return out.hidden_states[-1][:, 1:]


def stage_language(model, tokenizer, world_dir: Path, cfg: BaseTrainConfig, progress: bool) -> dict:
    records = load_llava_instruct(world_dir / "text_only.json")
    encoded = [tokenize_turns(tokenizer, conversation_turns(r), 0)[0] for r in records]
    lm = model.model.language_model
    params = _set_trainable(model, lm, model.lm_head)

    def step(idx):
        seqs = [encoded[i] for i in idx]
        batch, _, _ = pack_batch(seqs, [[IGNORE_INDEX] + s[1:] for s in seqs], tokenizer.pad_token_id,
                                 cfg.pack_width)
        return model(**batch).loss, {}

    return _run_stage("language", params, cfg.language, cfg, len(encoded), step, progress)


def stage_vision(model, images, scenes, cfg: BaseTrainConfig, progress: bool) -> dict:
    grid = cfg.model.image_size // cfg.model.patch_size
    cls_labels, size_labels = _token_cell_labels(scenes, grid)
    hidden = model.config.vision_config.hidden_size
    heads = torch.nn.ModuleDict({"cls": torch.nn.Linear(hidden, len(CLASSES) + 1), "size": torch.nn.Linear(hidden, 3)})
    params = _set_trainable(model, model.model.vision_tower) + list(heads.parameters())

    def step(idx):
        f = _vision_features(model, normalise(images[idx]))
        cls_logits, size_logits = heads["cls"](f), heads["size"](f)
        loss = F.cross_entropy(cls_logits.flatten(0, 1), cls_labels[idx].flatten()) + \
            F.cross_entropy(size_logits.flatten(0, 1), size_labels[idx].flatten())
        acc = (cls_logits.argmax(-1) == cls_labels[idx]).float().mean().item()
        return loss, {"cell_accuracy": acc}

    return _run_stage("vision", params, cfg.vision, cfg, len(images), step, progress)


def _word_ids(tokenizer, words: list[str]) -> torch.Tensor:
    """The id of the first word of each (possibly two-word) name: 'traffic light' -> 'traffic'."""
    return torch.tensor([tokenizer.convert_tokens_to_ids(w.split()[0]) for w in words])


def stage_projector(model, tokenizer, images, scenes, cfg: BaseTrainConfig, progress: bool) -> dict:
    grid = cfg.model.image_size // cfg.model.patch_size
    cls_labels, size_labels = _token_cell_labels(scenes, grid)
    cls_words = _word_ids(tokenizer, ["nothing"] + [c.name for c in CLASSES])
    size_words = _word_ids(tokenizer, ["small", "large"])
    size_target = torch.where(size_labels > 0, size_labels - 1, IGNORE_INDEX)
    emb_raw = model.get_input_embeddings().weight.detach()
    emb = F.normalize(emb_raw, dim=-1)
    scale = emb_raw[cls_words].pow(2).mean()
    params = _set_trainable(model, model.model.multi_modal_projector)
    t = cfg.align_temperature

    def step(idx):
        with torch.no_grad():
            f = _vision_features(model, normalise(images[idx]))
        z = model.model.multi_modal_projector(f)
        zn = F.normalize(z, dim=-1)
        cls_logits = zn @ emb[cls_words].T / t
        loss = F.cross_entropy(cls_logits.flatten(0, 1), cls_labels[idx].flatten()) + \
            F.cross_entropy((zn @ emb[size_words].T / t).flatten(0, 1), size_target[idx].flatten(),
                            ignore_index=IGNORE_INDEX) + \
            F.mse_loss(z, emb_raw[cls_words][cls_labels[idx]]) / scale  # land on the word, norm included
        acc = (cls_logits.argmax(-1) == cls_labels[idx]).float().mean().item()
        return loss, {"word_accuracy": acc}

    return _run_stage("projector", params, cfg.projector, cfg, len(images), step, progress)


@torch.no_grad()
def _image_tokens(model, images: torch.Tensor, progress: bool, batch_size: int = 256) -> torch.Tensor:
    """The LM-side image tokens (tower, then projector) of every image, (N, n_img, H_text): what the model's own
    forward would compute from the pixels, computed once while both are frozen."""
    was_training = model.training
    model.eval()   # the same numbers as train mode: the tiny tower and projector have no dropout
    chunks = [torch.stack(model.model.get_image_features(pixel_values=normalise(images[i:i + batch_size]),
                                                         return_dict=True).pooler_output)
              for i in progress_bar(range(0, len(images), batch_size), desc="image tokens", disable=not progress)]
    model.train(was_training)
    return torch.cat(chunks)


def stage_instruct(model, tokenizer, world_dir: Path, images, index_of: dict, cfg: BaseTrainConfig,
                   progress: bool) -> dict:
    records = load_llava_instruct(world_dir / "llava_instruct_train.json", image_dir=world_dir / "images")
    unknown = next((r for r in records if r["image"] not in index_of), None)
    if unknown is not None:
        raise io.DataError(f"{world_dir / 'llava_instruct_train.json'}, id {unknown['id']}: field 'image' "
                           f"{unknown['image']!r} is not a training scene of scenes.jsonl")
    n_img = model.config.image_seq_length
    groups = image_sequences(records) if cfg.per_image else [[i] for i in range(len(records))]
    shared = 2 + n_img if cfg.per_image else 0   # <s>USER: <image>*n, laid out once per image
    units = [shared_image_unit([tokenize_turns(tokenizer, conversation_turns(records[i]), n_img) for i in g], shared)
             for g in groups]
    image_idx = torch.tensor([index_of[records[g[0]]["image"]] for g in groups])
    image_id = model.config.image_token_id
    params = _set_trainable(model, model.model.language_model, model.lm_head)
    features = _image_tokens(model, images, progress)   # tower and projector are frozen: computed once
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "blind"))

    def step(idx):
        batch, sequence, order = pack_units([units[i] for i in idx], tokenizer.pad_token_id, cfg.pack_width)
        blind = torch.rand(len(idx), generator=g) < cfg.p_blind
        if blind.any():   # image-attention dropout: no token sees the dropped image tokens of its sequence
            keep_p = torch.rand(len(idx), generator=g) * cfg.blind_keep_max
            at = sequence.clamp(min=0)
            drop = (torch.rand(sequence.shape, generator=g) >= keep_p[at]) & blind[at] & (sequence >= 0)
            batch["attention_mask"] &= ~(drop & (batch["input_ids"] == image_id))[:, None, None, :]
        image = BaseModelOutputWithPooling(pooler_output=list(features[image_idx[idx[order]]]))
        return model(**batch, mm_encoder_outputs={"image": image}).loss, {}

    return _run_stage("instruct", params, cfg.instruct, cfg, len(units), step, progress)


# --- driver ----------------------------------------------------------------------------------------------------

def build_world_model(world_dir: Path, cfg: BaseTrainConfig):
    """A fresh tiny LLaVA whose tokenizer covers the world's vocabulary."""
    info = load_world_info(world_dir)
    if info["spec"]["image_size"] != cfg.model.image_size:
        raise ValueError(f"world images are {info['spec']['image_size']} px but the model expects "
                         f"{cfg.model.image_size} px (TinyLlavaConfig.image_size)")
    tokenizer = build_tokenizer([vocabulary_text()])
    processor = build_processor(tokenizer, cfg.model.image_size, cfg.model.patch_size)
    return build_tiny_llava(processor, cfg.model, seed=cfg.seed), processor


def train_base(world_dir: str | Path, cfg: BaseTrainConfig, checkpoint_dir: str | Path | None = None,
               progress: bool = True):
    """Run the four stages; returns (model, processor, report). With `checkpoint_dir`, each finished stage is
    saved there and a rerun resumes after the last finished stage."""
    world_dir = Path(world_dir)
    torch.set_num_threads(cpu_threads(cfg.threads))
    set_seed(cfg.seed)
    model, processor = build_world_model(world_dir, cfg)
    tokenizer = processor.tokenizer
    scenes = load_scenes(world_dir, split="train")
    names = [f"{s.image_id}.png" for s in scenes]
    images = load_images_uint8(world_dir, names, progress)
    index_of = {n: i for i, n in enumerate(names)}
    runners = {
        "language": lambda: stage_language(model, tokenizer, world_dir, cfg, progress),
        "vision": lambda: stage_vision(model, images, scenes, cfg, progress),
        "projector": lambda: stage_projector(model, tokenizer, images, scenes, cfg, progress),
        "instruct": lambda: stage_instruct(model, tokenizer, world_dir, images, index_of, cfg, progress),
    }
    reports = []
    identity = run_identity(config={k: v for k, v in cfg.to_dict().items() if k != "threads"},
                            data=io.fingerprint(world_dir / "world.json"))
    for k, name in enumerate(STAGES):
        ckpt = Path(checkpoint_dir) / f"stage{k}_{name}.pt" if checkpoint_dir else None
        if ckpt is not None and ckpt.is_file():
            state = torch.load(ckpt, weights_only=True)
            if state.get("identity") != identity:
                raise ValueError(f"{ckpt} was written for another base-training config or another world (its "
                                 f"world.json); use a new checkpoint folder, or the same config and world")
            model.load_state_dict(state["model"])
            reports.append({**state["report"], "resumed": True})
            logger.info("stage %s: resumed from %s", name, ckpt)
            continue
        logger.info("stage %s: %d steps", name, getattr(cfg, name).steps)
        model.train()
        reports.append(runners[name]())
        if ckpt is not None:
            with io.atomic_path(ckpt) as tmp:
                torch.save({"model": model.state_dict(), "report": reports[-1], "identity": identity}, tmp)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model, processor, {"stages": reports, "config": cfg.to_dict()}
