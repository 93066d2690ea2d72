"""Batched generation with LLaVA models, optionally with image tokens hidden from the LM (BDHS attention masking).

BDHS (Amirloo et al. §3.4.1, Eq. 6; docs/bdhs.md) limits the model's access to the image in latent space: each of
the k image tokens is kept iff u_i >= rho_th with u_i ~ U(0, 1), and the masked ones are hidden from the LM during
generation. We hide them with NOTES §4 route 1: zeros in the 2D attention mask at the masked image positions (so
no query in any LM layer attends to them), plus explicit `position_ids` computed from the padding-only mask, so
the RoPE positions of the tokens after the image stay what they are without masking (`generate` would otherwise
derive them from the mask's cumsum and shift them).

    >>> keep = [sample_image_keep(36, rho_th=0.99, seed=s) for s in range(len(images))]
    >>> answers = generate(model, processor, images, [chat_prompt(processor, "describe the image .")] * len(images),
    ...                    image_keep=keep)
"""

from __future__ import annotations

import inspect
import logging
from typing import Callable, Sequence

import torch
from PIL import Image
from transformers import PreTrainedModel, StoppingCriteria, StoppingCriteriaList
from transformers.processing_utils import ProcessorMixin

from mmstudy.io import load_image
from mmstudy.models.llava import image_token_id
from mmstudy.progress import progress_bar
from mmstudy.runs import derive_seed

logger = logging.getLogger(__name__)

PixelTransform = Callable[[torch.Tensor], torch.Tensor]


def chat_prompt(processor: ProcessorMixin, question: str) -> str:
    """The processor's chat rendering of one user turn (image, then `question`), ending with the assistant cue."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def sample_image_keep(n_image_tokens: int, rho_th: float, seed: int) -> torch.BoolTensor:
    """BDHS mask of Eq. 6: keep image token i iff u_i >= rho_th, u_i ~ U(0, 1) i.i.d. -> (n_image_tokens,) bool.

    About a fraction 1 - rho_th is kept; rho_th=0 keeps all and rho_th=1 keeps none (u is drawn from [0, 1)).
    The same (n_image_tokens, rho_th, seed) always gives the same mask.
    """
    if n_image_tokens < 0:
        raise ValueError(f"n_image_tokens must be >= 0, got {n_image_tokens}")
    if not 0.0 <= rho_th <= 1.0:
        raise ValueError(f"rho_th must be in [0, 1] (fraction of image tokens masked on average), got {rho_th}")
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.rand(n_image_tokens, generator=gen)
    return u >= rho_th


def prepare_inputs(
    processor: ProcessorMixin,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    image_keep: Sequence[torch.Tensor] | None = None,
    image_token: int | None = None,
) -> dict[str, torch.Tensor]:
    """Left-padded model inputs for one batch; with `image_keep`, the masked image positions are hidden.

    Returns the processor's tensors (`input_ids` (B, T), `pixel_values`, ...) with `attention_mask` (B, T) zeroed at
    the image tokens whose keep flag is False, and `position_ids` (B, T) from the padding-only mask, so that
    positions do not depend on the masking. `image_keep[b]` is a bool vector with one entry per image token of
    example b, in order (for LLaVA-NeXT this includes the image-newline tokens); `image_token` defaults to the
    processor's image token id.
    """
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    inputs = dict(processor(images=list(images), text=list(prompts), return_tensors="pt", padding=True))
    padding_mask = inputs["attention_mask"]
    inputs["position_ids"] = (padding_mask.long().cumsum(-1) - 1).clamp(min=0)
    if image_keep is not None:
        token = processor.image_token_id if image_token is None else image_token
        inputs["attention_mask"] = mask_image_tokens(inputs["input_ids"], padding_mask, image_keep, token)
    return inputs


def image_token_counts(processor: ProcessorMixin, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[int]:
    """Number of image tokens of each example, i.e. the length its `image_keep` vector must have.

    Constant for LLaVA 1.5 ((S/P)² per image); for LLaVA-NeXT it depends on each image's size (AnyRes), so the
    images are run through the processor.
    """
    inputs = prepare_inputs(processor, images, prompts)
    return (inputs["input_ids"] == processor.image_token_id).sum(-1).tolist()


def mask_image_tokens(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, image_keep: Sequence[torch.Tensor], image_token: int
) -> torch.Tensor:
    """Copy of `attention_mask` (B, T) with zeros at the image positions of `input_ids` (B, T) not kept.

    Raises ValueError when `image_keep` does not hold one vector per example whose length equals that example's
    number of image tokens.
    """
    if len(image_keep) != input_ids.shape[0]:
        raise ValueError(f"image_keep has {len(image_keep)} masks for a batch of {input_ids.shape[0]} examples")
    masked = attention_mask.clone()
    for b, keep in enumerate(image_keep):
        positions = (input_ids[b] == image_token).nonzero().squeeze(-1)
        keep = torch.as_tensor(keep, dtype=torch.bool, device=masked.device).flatten()
        if keep.numel() != positions.numel():
            raise ValueError(
                f"image_keep[{b}] has {keep.numel()} entries but example {b} has {positions.numel()} image tokens"
            )
        masked[b, positions[~keep]] = 0
    return masked


def generate(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    image_keep: Sequence[torch.Tensor] | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    use_cache: bool = True,
    stop_after: str | Sequence[str] | None = None,
    pixel_transforms: Sequence[PixelTransform | None] | None = None,
    progress: bool = True,
) -> list[str]:
    """Answer each (image, prompt) pair; returns the decoded answers (special tokens stripped), in input order.

    Batches of `batch_size` are left-padded and decoded with the KV cache (`use_cache=False` is for checks only).
    `image_keep[i]` (a bool vector over the image tokens of example i, e.g. from `sample_image_keep`) hides the
    image tokens marked False from the LM.
    `stop_after` ends each answer at the first token whose text contains it, or any of them (e.g. "." for POPE,
    whose parser reads only the text before the first period), so no answer is longer than the protocol needs.
    `pixel_transforms[i]` (e.g. BDHS_noise's diffusion noise) maps example i's preprocessed pixel values to the ones
    the model sees.
    With `do_sample`, batch j is sampled with the torch seed `derive_seed(seed, j)`: an answer is reproducible
    for a fixed seed and a fixed batch composition (same examples, same order, same batch_size), not across them.
    """
    check_generate_args(images, prompts, image_keep, batch_size, max_new_tokens, temperature)
    if pixel_transforms is not None and len(pixel_transforms) != len(prompts):
        raise ValueError(f"pixel_transforms has {len(pixel_transforms)} entries for {len(prompts)} prompts")
    token = image_token_id(model)
    answers: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for j, start in enumerate(progress_bar(starts, desc="generate", unit="batch", disable=not progress)):
        stop = start + batch_size
        keep = None if image_keep is None else image_keep[start:stop]
        inputs = prepare_inputs(processor, images[start:stop], prompts[start:stop], keep, image_token=token)
        if pixel_transforms is not None:
            inputs["pixel_values"] = transform_pixels(inputs["pixel_values"], pixel_transforms[start:stop])
        gen_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "use_cache": use_cache}
        if stop_after is not None:
            gen_kwargs["stopping_criteria"] = StoppingCriteriaList([StopAfterTokens(processor.tokenizer, stop_after)])
        if do_sample:
            gen_kwargs["temperature"] = temperature
        new_tokens = _generate_batch(model, inputs, derive_seed(seed, j), **gen_kwargs)
        answers.extend(text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True))
    return answers


def transform_pixels(pixel_values: torch.Tensor, transforms: Sequence[PixelTransform | None]) -> torch.Tensor:
    """Apply transforms[b] to example b's pixel values (first dimension; any layout: LLaVA 1.5 (B, C, H, W) or
    LLaVA-NeXT's (B, crops, C, H, W)); None leaves an example as it is."""
    if len(transforms) != pixel_values.shape[0]:
        raise ValueError(f"{len(transforms)} pixel transforms for a batch of {pixel_values.shape[0]} images")
    out = pixel_values.clone()
    for b, fn in enumerate(transforms):
        if fn is not None:
            out[b] = fn(pixel_values[b])
    return out


class StopAfterTokens(StoppingCriteria):
    """Marks a sequence done once its last token's text contains one of `texts` (per row; finished rows are
    padded)."""

    def __init__(self, tokenizer, texts: str | Sequence[str]):
        texts = (texts,) if isinstance(texts, str) else tuple(texts)
        self.ids = torch.unique(torch.cat([tokens_containing(tokenizer, t) for t in texts]))
        if not len(self.ids):
            raise ValueError(f"no token of the tokenizer contains any of {texts!r}: cannot stop on them")

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.isin(input_ids[:, -1], self.ids.to(input_ids.device))


_STOP_IDS: dict = {}


def tokens_containing(tokenizer, text: str) -> torch.Tensor:
    """Ids of every vocabulary token whose text contains `text` (cached per tokenizer)."""
    key = (id(tokenizer), text)
    if key not in _STOP_IDS:
        vocab = tokenizer.get_vocab()
        _STOP_IDS[key] = torch.tensor(sorted(i for tok, i in vocab.items()
                                             if text in tokenizer.convert_tokens_to_string([tok])), dtype=torch.long)
    return _STOP_IDS[key]


def check_generate_args(images, prompts, image_keep, batch_size, max_new_tokens, temperature) -> None:
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    if image_keep is not None and len(image_keep) != len(prompts):
        raise ValueError(f"image_keep has {len(image_keep)} masks for {len(prompts)} prompts")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature} (use do_sample=False for greedy decoding)")


def cache_keyword(module) -> str:
    """The KV-cache keyword of this transformers version's forward ("cache" in 5.x, "past_key_values" before)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def to_model(inputs: dict, model: PreTrainedModel) -> dict:
    """Model inputs on the model's device, floating pixel values in its dtype."""
    inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


@torch.no_grad()
def _generate_batch(model: PreTrainedModel, inputs: dict, seed: int, **gen_kwargs) -> torch.Tensor:
    """Run `model.generate` on one prepared batch under its own RNG seed -> new tokens (B, <= max_new_tokens)."""
    inputs = to_model(inputs, model)
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.generate(**inputs, **gen_kwargs)
    return out[:, inputs["input_ids"].shape[1]:]


def generate_texts(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    prompts: Sequence[str],
    images: Sequence[str | Image.Image] | None = None,
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    progress: bool = False,
) -> list[str]:
    """Greedy answers to already-rendered chat prompts: with `images` (paths or PIL images, one per prompt, the
    prompt holding the image token) or, with `images=None`, text only. Used by local judges."""
    if images is not None:
        pics = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
        return generate(model, processor, pics, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        progress=progress)
    check_generate_args(prompts, prompts, None, batch_size, max_new_tokens, 1.0)
    answers: list[str] = []
    for start in progress_bar(range(0, len(prompts), batch_size), desc="generate", unit="batch", disable=not progress):
        inputs = dict(processor(text=list(prompts[start:start + batch_size]), return_tensors="pt", padding=True))
        new_tokens = _generate_batch(model, inputs, 0, max_new_tokens=max_new_tokens, do_sample=False)
        answers.extend(text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True))
    return answers
