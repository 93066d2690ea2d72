"""Decoding methods that need no training (docs/decoding.md): the next-token rules as pure functions, and a batched
greedy loop with the KV cache that runs a second, contrasting copy of each prompt beside it.

    greedy  `model.generate`'s greedy decoding (`mmstudy.models.generation.generate`)
    vcd     visual contrastive decoding (Leng et al. 2024): (1 + alpha) logits(image) - alpha logits(noised image)
            on the tokens whose probability under the clean logits is at least `beta` times the most likely one's
            (the adaptive plausibility cut-off), -inf elsewhere; the noised copy gets the diffusion noise of
            `noise_steps` steps (the caller passes it as a pixel transform)
    pai     attention boosting (Liu et al. 2024, "Paying more attention to image"): in the LM's layers from
            `start_layer` on, the newest query's attention logits s on image keys become s + alpha |s| before the
            softmax; then the contrast of the boosted logits with the logits of the prompt with every image token
            hidden (no boost), weight gamma - 1 on the image-less copy, under the same cut-off `beta`.
            PAI's text-only prompt drops the image tokens; ours hides them with the attention mask (BDHS's route),
            so the text keeps its positions.

    >>> spec = parse_decoding("vcd:alpha=1,beta=0.1")
    >>> answers = decode(model, processor, images, prompts, spec, contrast_pixels=noise_transforms)
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from PIL import Image
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.processing_utils import ProcessorMixin

from mmstudy.models.corruption import diffusion_noise
from mmstudy.models.generation import (
    PixelTransform,
    cache_keyword,
    check_generate_args,
    mask_image_tokens,
    prepare_inputs,
    to_model,
    tokens_containing,
    transform_pixels,
)
from mmstudy.models.llava import image_token_id
from mmstudy.progress import progress_bar

# each method's settings, in the order `str(Decoding)` writes them
SETTINGS = {"greedy": (), "vcd": ("alpha", "beta", "noise_steps"), "pai": ("alpha", "gamma", "beta", "start_layer")}
METHODS = tuple(SETTINGS)


@dataclass(frozen=True)
class Decoding:
    """A decoding method and its settings; `str()` gives the option's text back (`parse_decoding`'s inverse)."""

    method: str = "greedy"
    alpha: float = 1.0          # vcd: weight of the noised copy; pai: attention boost on image keys
    beta: float = 0.1           # the plausibility cut-off (vcd, pai)
    noise_steps: int = 500      # vcd: diffusion steps of the noised copy (0..999)
    gamma: float = 1.1          # pai: guidance scale of the image-less contrast (1: none)
    start_layer: int = 2        # pai: first LM layer whose attention is boosted

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown decoding method {self.method!r}; choose from {list(METHODS)}")
        if self.alpha < 0 or not 0 <= self.beta <= 1 or self.gamma < 1 or self.start_layer < 0:
            raise ValueError(f"decoding {self}: need alpha >= 0, 0 <= beta <= 1, gamma >= 1, start_layer >= 0")
        if not 0 <= self.noise_steps < 1000:
            raise ValueError(f"decoding {self}: noise_steps must be in [0, 999], got {self.noise_steps}")

    def __str__(self) -> str:
        keys = SETTINGS[self.method]
        return self.method + (":" + ",".join(f"{k}={getattr(self, k):g}" for k in keys) if keys else "")

    @property
    def contrast_weight(self) -> float:
        """The weight of the contrasting copy in `contrastive_logits`."""
        return self.alpha if self.method == "vcd" else self.gamma - 1.0


# PAI's published settings for LLaVA-1.5 (alpha 0.2, gamma 1.1, layers from the third); VCD's (alpha 1, beta 0.1,
# 500 noise steps)
DEFAULTS = {"greedy": {}, "vcd": {"alpha": 1.0}, "pai": {"alpha": 0.2}}


def parse_decoding(text: str) -> Decoding:
    """`greedy`, `vcd:alpha=1,beta=0.1,noise_steps=500` or `pai:alpha=0.2,gamma=1.1,beta=0.1,start_layer=2`
    (any settings may be left out) -> `Decoding`. Raises ValueError naming an unknown method or setting."""
    method, _, rest = text.strip().partition(":")
    if method not in METHODS:
        raise ValueError(f"--decoding {text!r}: unknown method {method!r}; choose from {list(METHODS)}")
    fields = {f.name: f.type for f in dataclasses.fields(Decoding)}
    allowed = SETTINGS[method]
    settings = dict(DEFAULTS[method])
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in allowed:
            raise ValueError(f"--decoding {text!r}: {part!r} is not a setting of {method} "
                             f"(settings: {', '.join(allowed) or 'none'})")
        try:
            settings[key] = int(value) if fields[key] == "int" else float(value)
        except ValueError:
            raise ValueError(f"--decoding {text!r}: {key} must be a number, got {value!r}") from None
    return Decoding(method, **settings)


# ---------------------------------------------------------------- the next-token rules (pure)


def plausible(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """The adaptive plausibility mask: tokens whose probability is at least `beta` times the most likely one's
    (log p >= log beta + max log p), per row; beta = 0 keeps every token."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp >= logp.max(dim=-1, keepdim=True).values + (math.log(beta) if beta > 0 else -math.inf)


def contrastive_logits(logits: torch.Tensor, logits_noised: torch.Tensor, alpha: float = 1.0,
                       beta: float = 0.1) -> torch.Tensor:
    """VCD's next-token logits: (1 + alpha) logits - alpha logits_noised where `plausible(logits, beta)`, -inf
    elsewhere. logits, logits_noised: (..., vocabulary), from the same prefix with the image and with its noised
    copy (or, for PAI, with its image hidden). alpha = 0 and beta = 0 give `logits` back."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if logits.shape != logits_noised.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and noised logits {tuple(logits_noised.shape)} differ")
    contrast = (1 + alpha) * logits.float() - alpha * logits_noised.float()
    return contrast.masked_fill(~plausible(logits, beta), float("-inf"))


def boost_image_attention(scores: torch.Tensor, image_keys: torch.Tensor, alpha: float) -> torch.Tensor:
    """PAI's boost: the last query's attention logits on image keys, s -> s + alpha |s|; other entries unchanged.
    scores: (B, heads, queries, keys) before the softmax (mask included); image_keys: (B, keys) bool."""
    if image_keys.shape != (scores.shape[0], scores.shape[-1]):
        raise ValueError(f"image_keys {tuple(image_keys.shape)} do not match scores {tuple(scores.shape)}")
    last = scores[:, :, -1, :]
    boosted = torch.where(image_keys[:, None, :], last + alpha * last.abs(), last)
    return torch.cat([scores[:, :, :-1, :], boosted[:, :, None, :]], dim=2)


# ---------------------------------------------------------------- PAI's attention, through transformers' registry


@dataclass
class _Boost:
    image_keys: torch.Tensor    # (B, T) bool: the image positions of each row (False on rows not boosted)
    alpha: float
    start_layer: int


_BOOST: contextvars.ContextVar[_Boost | None] = contextvars.ContextVar("mmstudy_pai_boost", default=None)
ATTENTION = "mmstudy_pai"


def _boosted_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention (float mask) with PAI's boost on the layers and rows `_BOOST` names."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, :key.shape[-2]]
    boost = _BOOST.get()
    if boost is not None and boost.alpha and getattr(module, "layer_idx", 0) >= boost.start_layer:
        keys = torch.zeros(scores.shape[0], scores.shape[-1], dtype=torch.bool, device=scores.device)
        n = min(keys.shape[1], boost.image_keys.shape[1])
        keys[:, :n] = boost.image_keys[:, :n]
        scores = boost_image_attention(scores, keys, boost.alpha)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(ATTENTION, _boosted_attention)
AttentionMaskInterface.register(ATTENTION, eager_mask)


@contextmanager
def boosted(model: PreTrainedModel, image_keys: torch.Tensor, alpha: float, start_layer: int) -> Iterator[None]:
    """Within the block, the LM of `model` attends with PAI's boost (`_boosted_attention`) for the rows and
    positions `image_keys` (B, T) marks; the model's attention implementation is restored afterwards."""
    before = model.config.text_config._attn_implementation
    model.set_attn_implementation({"text_config": ATTENTION})
    token = _BOOST.set(_Boost(image_keys, alpha, start_layer))
    try:
        yield
    finally:
        _BOOST.reset(token)
        model.set_attn_implementation({"text_config": before})


# ---------------------------------------------------------------- the decoding loop


def decode(model: PreTrainedModel, processor: ProcessorMixin, images: Sequence[Image.Image], prompts: Sequence[str],
           spec: Decoding, *, max_new_tokens: int = 64, batch_size: int = 32,
           contrast_pixels: Sequence[PixelTransform] | None = None, stop_after: str | Sequence[str] | None = None,
           progress: bool = True) -> list[str]:
    """Greedy answers under `spec` (vcd or pai), in input order, batched and left-padded like `generate`. Each
    batch runs as 2B rows: the prompts as they are (for pai, with the boost), then their contrasting copies (vcd:
    pixels through `contrast_pixels[i]`, required; pai: every image token hidden). A row ends at EOS or after a
    token containing `stop_after`."""
    if spec.method == "greedy":
        raise ValueError("decode runs vcd and pai; greedy decoding is `generate`")
    check_generate_args(images, prompts, None, batch_size, max_new_tokens, 1.0)
    if spec.method == "vcd" and (contrast_pixels is None or len(contrast_pixels) != len(prompts)):
        raise ValueError("vcd needs one pixel transform per prompt (contrast_pixels), e.g. the diffusion noise")
    token = image_token_id(model)
    stops = set() if stop_after is None else set(tokens_containing(processor.tokenizer, stop_after).tolist())
    answers: list[str] = []
    for start in progress_bar(range(0, len(prompts), batch_size), desc=f"decode ({spec.method})", unit="batch",
                              disable=not progress):
        stop = start + batch_size
        inputs = prepare_inputs(processor, images[start:stop], prompts[start:stop], image_token=token)
        pixels = None if contrast_pixels is None else contrast_pixels[start:stop]
        rows = _with_contrast(inputs, spec, token, pixels)
        new = _decode_batch(model, rows, spec, token, max_new_tokens, stops, processor.tokenizer.eos_token_id)
        answers.extend(text.strip() for text in processor.batch_decode(new, skip_special_tokens=True))
    return answers


def _with_contrast(inputs: dict, spec: Decoding, token: int, pixels) -> dict:
    """The batch's inputs stacked over their contrasting copies (2B rows)."""
    n = inputs["input_ids"].shape[0]
    other = dict(inputs)
    if spec.method == "vcd":
        other["pixel_values"] = transform_pixels(inputs["pixel_values"], pixels)
    else:
        hidden = [torch.zeros(int((ids == token).sum()), dtype=torch.bool) for ids in inputs["input_ids"]]
        other["attention_mask"] = mask_image_tokens(inputs["input_ids"], inputs["attention_mask"], hidden, token)
    both = {k: torch.cat([v, other[k]]) if isinstance(v, torch.Tensor) and v.shape[0] == n else v
            for k, v in inputs.items()}
    return both


@torch.no_grad()
def _decode_batch(model, rows: dict, spec: Decoding, token: int, max_new_tokens: int, stops: set[int],
                  eos: int) -> torch.Tensor:
    """The greedy loop over one stacked batch -> new tokens of the first half (B, <= max_new_tokens), padded with
    EOS after a row ends."""
    rows = to_model(rows, model)
    n = rows["input_ids"].shape[0] // 2
    image_keys = rows["input_ids"] == token
    image_keys[n:] = False                                          # the contrasting copies are never boosted
    context = (boosted(model, image_keys, spec.alpha, spec.start_layer) if spec.method == "pai"
               else nullcontext())
    mask, positions = rows["attention_mask"], rows["position_ids"]
    stop_ids = torch.tensor(sorted(stops | {eos}), device=mask.device)
    done = torch.zeros(n, dtype=torch.bool, device=mask.device)
    out, cache = [], cache_keyword(model)
    with context:
        step = model(**rows, use_cache=True)
        for i in range(max_new_tokens):
            logits = step.logits[:, -1]
            chosen = contrastive_logits(logits[:n], logits[n:], spec.contrast_weight, spec.beta).argmax(-1)
            chosen = torch.where(done, torch.full_like(chosen, eos), chosen)
            out.append(chosen)
            done |= torch.isin(chosen, stop_ids)
            if bool(done.all()) or i == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(2 * n, 1)], dim=1)
            positions = positions[:, -1:] + 1
            step = model(input_ids=torch.cat([chosen, chosen])[:, None], attention_mask=mask,
                         position_ids=positions, use_cache=True,
                         **{cache: step[cache] if cache in step else step.past_key_values})
    return torch.stack(out, dim=1)


def noise_transforms(steps: int, seeds: Sequence[int]) -> list[PixelTransform]:
    """VCD's noised copies: one pixel transform per example, the diffusion noise of `steps` steps drawn with that
    example's seed."""
    return [lambda px, s=s: diffusion_noise(px, steps, s) for s in seeds]


# ---------------------------------------------------------------- the yes/no threshold (POPE's bias control)

_WORD_IDS: dict = {}


def word_token_ids(tokenizer, word: str) -> torch.Tensor:
    """Ids of every vocabulary token whose text, stripped and lower-cased, is `word` ("yes": yes, Yes, ▁Yes, ...)."""
    key = (id(tokenizer), word)
    if key not in _WORD_IDS:
        ids = sorted(i for tok, i in tokenizer.get_vocab().items()
                     if tokenizer.convert_tokens_to_string([tok]).strip().lower() == word)
        if not ids:
            raise ValueError(f"no token of the tokenizer reads {word!r}")
        _WORD_IDS[key] = torch.tensor(ids, dtype=torch.long)
    return _WORD_IDS[key]


@torch.no_grad()
def yes_no_margins(model: PreTrainedModel, processor: ProcessorMixin, images: Sequence[Image.Image],
                   prompts: Sequence[str], *, batch_size: int = 32, progress: bool = True) -> list[float]:
    """The model's log-odds of answering "yes" over "no" as its first token, per (image, rendered prompt):
    logsumexp of the next-token logits over the tokens reading "yes" minus the same over "no"."""
    check_generate_args(images, prompts, None, batch_size, 1, 1.0)
    yes, no = (word_token_ids(processor.tokenizer, w).to(model.device) for w in ("yes", "no"))
    margins: list[float] = []
    for start in progress_bar(range(0, len(prompts), batch_size), desc="yes/no margins", unit="batch",
                              disable=not progress):
        inputs = to_model(prepare_inputs(processor, images[start:start + batch_size],
                                         prompts[start:start + batch_size]), model)
        logits = model(**inputs).logits[:, -1].float()
        margins.extend((logits[:, yes].logsumexp(-1) - logits[:, no].logsumexp(-1)).tolist())
    return margins
