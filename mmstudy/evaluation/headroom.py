"""Headroom: does the model *have* the evidence it fails to use?

Preference alignment trains the language model (LoRA on the LM; tower and projector frozen). It can only fix a
hallucination whose truth is already in the image-token features the LM reads. This module measures that with
linear probes:

1. features: for each image, the image-token features the LM receives (the projector's output: the LM's
   input embeddings at the image positions) and the LM's hidden states at the image positions after some of its
   layers. Under causal attention the image positions see only the tokens before them, so the question does not
   matter;
2. probes: per feature source, one multi-label probe predicting every class's presence at once, fit on training
   scenes. The default ("tokens") scores each image token linearly and takes the log-sum-exp over the image's
   tokens, a smooth "some token shows the class" that suits features laid out per grid cell; "pooled" is a
   logistic regression on [mean, max] over the tokens, for models whose token features do not fit in memory. The
   source with the lowest log-loss on held-out *training* scenes is the headline one (nothing is chosen on
   benchmark items);
3. scores on the benchmark images (validation split): the probe's accuracy on the POPE questions, and the
   **recoverable share**: of the model's wrong POPE answers, and of its hallucinated caption mentions (CHAIR), the
   share whose truth the probe gets right with probability >= `threshold` (0.9).

A high recoverable share means the hallucinations are the language model's: its prior overrides evidence it has.
A low one means the eye misread the image, which no preference on the LM can fix.

    >>> metrics = headroom_metrics(model, processor, "world", pope_samples, chair_samples)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mmstudy import io
from mmstudy.benchmarks.headroom import recoverable_scores
from mmstudy.models.generation import chat_prompt, prepare_inputs, to_model
from mmstudy.progress import progress_bar
from mmstudy.runs import derive_seed
from mmstudy.world.scene import CLASSES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadroomConfig:
    n_train: int = 4000         # training scenes the probes are fit on
    n_holdout: int = 1000       # further training scenes that choose the feature source (lowest log-loss)
    layers: tuple = ()          # LM hidden-state layers probed (1 = after the first block); () = half and last
    probe: str = "tokens"       # "tokens": a linear score per image token, log-sum-exp over tokens; "pooled": a
    #                             linear score of [mean, max] over tokens (less memory for large models)
    threshold: float = 0.9      # "the probe gets the truth right with probability >= threshold"
    l2: float = 1e-3            # ridge penalty of the probes (per weight, on standardized features)
    steps: int = 100            # L-BFGS iterations of a probe fit
    batch_size: int = 64        # images per feature forward pass
    seed: int = 0

    def __post_init__(self):
        if self.n_train < 10 or self.n_holdout < 10:
            raise ValueError(f"HeadroomConfig needs n_train and n_holdout >= 10, got {self.n_train}, {self.n_holdout}")
        if not 0.5 < self.threshold < 1:
            raise ValueError(f"HeadroomConfig.threshold must lie in (0.5, 1), got {self.threshold}")
        if self.l2 < 0 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("HeadroomConfig needs l2 >= 0, steps >= 1, batch_size >= 1")
        if self.probe not in ("tokens", "pooled"):
            raise ValueError(f"HeadroomConfig.probe must be 'tokens' or 'pooled', got {self.probe!r}")
        if any(int(k) < 1 for k in self.layers):
            raise ValueError(f"HeadroomConfig.layers are 1-based LM layers, got {self.layers}")


def default_layers(n_layers: int) -> tuple[int, ...]:
    """The LM layers probed by default: half and all of the way through (each source costs a probe fit)."""
    return tuple(sorted({max(1, round(n_layers * f)) for f in (0.5, 1.0)}))


# ----------------------------------------------------------------------------------------------------- features


@dataclass
class Features:
    """Image-token features of one source: `tokens` (N, T, H) padded with `mask` (N, T) True at real tokens (the
    "tokens" probe), or `pooled` (N, 2H), [mean, max] over each image's tokens (the "pooled" probe)."""

    tokens: np.ndarray | None = None
    mask: np.ndarray | None = None
    pooled: np.ndarray | None = None

    def rows(self, index) -> "Features":
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return Features(pick(self.tokens), pick(self.mask), pick(self.pooled))


@torch.no_grad()
def image_features(model, processor, images: Sequence, layers: Sequence[int], probe: str = "tokens",
                   batch_size: int = 64, progress: bool = True) -> dict[str, Features]:
    """Features per source, {"projector": ..., "lm<k>": ... for k in `layers`}: the LM's hidden states at the image
    positions (index 0 is its input there: the projector's output), kept per token ("tokens") or pooled."""
    token = int(model.config.image_token_id)
    prompt = chat_prompt(processor, "Describe the image in detail.")
    names = {0: "projector", **{k: f"lm{k}" for k in layers}}
    parts: dict[str, list] = {name: [] for name in names.values()}
    masks = []
    starts = range(0, len(images), batch_size)
    for start in progress_bar(starts, desc="probe features", unit="batch", disable=not progress):
        batch = list(images[start:start + batch_size])
        inputs = to_model(prepare_inputs(processor, batch, [prompt] * len(batch)), model)
        hidden = model(**inputs, output_hidden_states=True).hidden_states
        is_image = inputs["input_ids"] == token
        counts = is_image.sum(1)
        width = int(counts.max())
        # each row's image tokens, in order, left-aligned into (B, width)
        slot = torch.arange(width, device=is_image.device) < counts[:, None]
        masks.append(slot.cpu().numpy())
        for index, name in names.items():
            h = hidden[index].float()
            rows = torch.zeros(len(batch), width, h.shape[-1], device=h.device)
            rows[slot] = h[is_image]
            if probe == "pooled":
                m = slot.unsqueeze(-1)
                mean = (rows * m).sum(1) / m.sum(1).clamp(min=1)
                peak = rows.masked_fill(~m, float("-inf")).amax(1)
                parts[name].append(torch.cat([mean, peak], -1).cpu().numpy())
            else:
                parts[name].append(rows.cpu().numpy())
    if probe == "pooled":
        return {name: Features(pooled=np.concatenate(p)) for name, p in parts.items()}
    width = max(m.shape[1] for m in masks)
    mask = np.concatenate([np.pad(m, ((0, 0), (0, width - m.shape[1]))) for m in masks])
    return {name: Features(np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0))) for a in p]), mask)
            for name, p in parts.items()}


# ------------------------------------------------------------------------------------------------------- probes


@dataclass
class Probe:
    """A multi-label linear probe on standardized features. On tokens, class c's logit is the log-sum-exp over an
    image's tokens of a linear score of each token (a smooth "any token shows c"); on pooled rows, a linear score."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray   # (D, C)
    bias: np.ndarray     # (C,)

    def logits(self, f: Features) -> torch.Tensor:
        x = f.pooled if f.tokens is None else f.tokens
        xs = torch.from_numpy(((x - self.mean) / self.scale).astype(np.float32))
        return _logits(xs, None if f.mask is None else torch.from_numpy(f.mask), torch.from_numpy(self.weight),
                       torch.from_numpy(self.bias))

    def proba(self, f: Features) -> np.ndarray:
        return torch.sigmoid(self.logits(f)).numpy().astype(np.float64)


def _logits(x: torch.Tensor, mask: torch.Tensor | None, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return x @ w + b
    scores = (x @ w + b).masked_fill(~mask.unsqueeze(-1), float("-inf"))
    return torch.logsumexp(scores, dim=1)


def fit_probe(f: Features, y: np.ndarray, l2: float = 1e-3, steps: int = 200) -> Probe:
    """Fit P(class present | features) for every class at once: full-batch L-BFGS on the mean binary
    cross-entropy plus `l2` times the mean squared weight, on features standardized over (real) tokens or rows.
    y (N, C) in {0, 1}."""
    x = f.pooled if f.tokens is None else f.tokens
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"fit_probe needs as many feature rows as label rows (> 0), got {len(x)} and {len(y)}")
    flat = x if f.tokens is None else x[f.mask]
    mean, scale = flat.mean(0), flat.std(0) + 1e-6
    xs = torch.from_numpy(((x - mean) / scale).astype(np.float32))
    mask = None if f.mask is None else torch.from_numpy(f.mask)
    ys = torch.from_numpy(np.asarray(y, dtype=np.float32))
    w = torch.zeros(x.shape[-1], y.shape[1], requires_grad=True)
    prior = ys.mean(0).clamp(1e-4, 1 - 1e-4)
    b0 = torch.log(prior / (1 - prior))
    if mask is not None:   # log-sum-exp over T equal scores adds log T
        b0 = b0 - torch.log(mask.sum(1).float().mean())
    b = b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(_logits(xs, mask, w, b), ys) + \
            l2 * w.pow(2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return Probe(mean, scale, w.detach().numpy(), b.detach().numpy())


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities p against labels y."""
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# ------------------------------------------------------------------------------------------------------- scores


def _presence(scenes: Sequence[dict], classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(scenes), len(classes)))
    for row, scene in enumerate(scenes):
        for obj in scene["objects"]:
            y[row, index[obj["name"]]] = 1
    return y


def headroom_metrics(model, processor, data_dir: str | Path, pope_samples: Sequence[dict],
                     chair_samples: Sequence[dict], cfg: HeadroomConfig = HeadroomConfig(),
                     progress: bool = True) -> dict:
    """Probe every feature source on training scenes of the world in `data_dir`, choose one on held-out training
    scenes, and score the model's POPE and CHAIR samples against it. Keys: `<metric>` (the chosen source),
    `<source>/<metric>` for every source, `source`, `<source>/holdout_log_loss`, `<source>/holdout_accuracy`."""
    data_dir = Path(data_dir)
    path = data_dir / "scenes.jsonl"
    if not path.is_file():
        raise io.DataError(f"{data_dir}: the headroom probes need the world's ground truth ({path} not found)")
    scenes = io.read_jsonl(path, required=("image_id", "split", "objects"))
    train = [s for s in scenes if s["split"] == "train"]
    n_train, n_holdout = cfg.n_train, cfg.n_holdout
    if len(train) < n_train + n_holdout:  # a small world (the smoke profile): 80 % fit, 20 % hold-out
        if len(train) < 20:
            raise io.DataError(f"{path}: {len(train)} training scenes; the headroom probes need at least 20")
        n_train = int(0.8 * len(train))
        n_holdout = len(train) - n_train
        logger.warning("headroom: only %d training scenes; probes fit on %d, source chosen on %d", len(train),
                       n_train, n_holdout)
    need = n_train + n_holdout
    order = np.random.default_rng(derive_seed(cfg.seed, "headroom")).permutation(len(train))[:need]
    picked = [train[i] for i in order]
    by_name = {f"{s['image_id']}.png": s for s in scenes}
    benchmark_images = sorted({s["image"] for s in list(pope_samples) + list(chair_samples)})
    missing = [n for n in benchmark_images if n not in by_name]
    if missing:
        raise io.DataError(f"{path}: no ground truth for benchmark image(s) {missing[:3]}")
    names = [f"{s['image_id']}.png" for s in picked] + benchmark_images
    images = [io.load_image(data_dir / "images" / n, where=f"{path}, image {n}") for n in names]
    layers = tuple(cfg.layers) or default_layers(model.config.text_config.num_hidden_layers)
    logger.info("headroom: features of %d training and %d benchmark images (LM layers %s)", need,
                len(benchmark_images), list(layers))
    features = image_features(model, processor, images, layers, cfg.probe, cfg.batch_size, progress)
    classes = [c.name for c in CLASSES]
    y = _presence(picked, classes)
    y_fit, y_hold = y[:n_train], y[n_train:]
    metrics, losses = {"n_train": n_train, "n_holdout": n_holdout}, {}
    for name, f in features.items():
        probe = fit_probe(f.rows(slice(0, n_train)), y_fit, cfg.l2, cfg.steps)
        p_hold = probe.proba(f.rows(slice(n_train, need)))
        losses[name] = log_loss(p_hold, y_hold)
        metrics[f"{name}/holdout_log_loss"] = losses[name]
        metrics[f"{name}/holdout_accuracy"] = float(np.mean((p_hold >= 0.5) == y_hold))
        p_bench = dict(zip(benchmark_images, probe.proba(f.rows(slice(need, None)))))
        scores = recoverable_scores(p_bench, classes, pope_samples, chair_samples, cfg.threshold)
        metrics.update({f"{name}/{k}": v for k, v in scores.items()})
    best = min(losses, key=losses.get)
    metrics.update({k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(f"{best}/")})
    metrics["source"] = best
    logger.info("headroom (%s): probe POPE accuracy %.3f, recoverable POPE %.3f, CHAIR %.3f", best,
                metrics["probe_pope_accuracy"], metrics["recoverable_pope"], metrics["recoverable_chair"])
    return metrics

