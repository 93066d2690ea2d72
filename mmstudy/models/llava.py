"""Build, save and load LLaVA models: the tiny from-scratch world model and any local Hugging Face LLaVA checkpoint.

The tiny model is built entirely offline (nothing touches a hub): a word-level tokenizer trained on the world's
corpus, a CLIP-style image processor (PIL backend: torchvision is not installed), a `LlavaProcessor` with the chat
template below, and a `LlavaForConditionalGeneration` of a small CLIP vision tower plus a small Llama LM with tied
embeddings. `load_llava` reads that model back, and equally any local LLaVA 1.5 (`model_type` "llava") or LLaVA-NeXT
1.6 ("llava_next") checkpoint, so the same pipeline runs at toy scale and at full scale.

    >>> tok = build_tokenizer(corpus); proc = build_processor(tok, 48, 8)
    >>> model = build_tiny_llava(proc, TinyLlavaConfig(), seed=0); save_llava(model, proc, "ckpt")
    >>> model, proc = load_llava("ckpt")
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoProcessor,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.processing_utils import ProcessorMixin

from mmstudy.io import DataError, atomic_dir

logger = logging.getLogger(__name__)

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"
IMAGE_TOKEN = "<image>"
USER_TOKEN, ASSISTANT_TOKEN = "USER:", "ASSISTANT:"
# Order fixes the ids: <pad>=0, <s>=1, </s>=2, <unk>=3, <image>=4, USER:=5, ASSISTANT:=6.
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, IMAGE_TOKEN, USER_TOKEN, ASSISTANT_TOKEN)

# One user turn renders as '<s>USER: <image> is there a fork ? ASSISTANT:' (LLaVA's order: image, then text; NOTES
# §2). TRL's DPO collator relies on prompt+answer rendering starting with the prompt rendering, which this
# template guarantees.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}"
    "{% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }} {% endfor %}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

LLAVA_CLASSES = {"llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration}

# Only the LM's attention and MLP projections: a bare ["q_proj", ...] list would also match the CLIP vision tower,
# which has q/k/v_proj too (NOTES §5).
LORA_TARGET_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


# ----------------------------------------------------------------------------------------------------- tokenizer


def build_tokenizer(corpus: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on `corpus`: lowercased, punctuation split off, left padding, readable decode.

    "Yes, there is a fork." encodes as `yes , there is a fork .` and decodes (skip_special_tokens=True) back to
    "yes, there is a fork.". Every word of the corpus is kept; ids are the special tokens first (SPECIAL_TOKENS
    order), then words by decreasing count, ties broken alphabetically (the trainer sorts that way), so the same
    corpus always gives the same vocabulary.
    """
    tok = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    # WordPiece joins tokens with spaces; its per-token cleanup drops the space before . , ? ! . The transformers-side
    # clean_up_tokenization_spaces stays off: it also rewrites " do not" as " don't".
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    trainer = trainers.WordLevelTrainer(
        vocab_size=2**31 - 1, min_frequency=1, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",  # a constructor argument is saved; setting the attribute afterwards is not (NOTES §10)
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    wrapped.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, USER_TOKEN, ASSISTANT_TOKEN]})
    logger.info("built a word-level tokenizer with %d tokens", len(wrapped))
    return wrapped


# ----------------------------------------------------------------------------------------------------- processor


def build_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int) -> LlavaProcessor:
    """A `LlavaProcessor` expanding each `<image>` into (image_size / patch_size)² placeholder tokens."""
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
    size = {"height": image_size, "width": image_size}
    image_processor = CLIPImageProcessorPil(
        size=size, crop_size=size, do_center_crop=False, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by the "default" strategy
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


# ----------------------------------------------------------------------------------------------------- model


@dataclass
class TinyLlavaConfig:
    """Shape of the from-scratch tiny LLaVA (defaults: 48 px images, 36 image tokens, ~2 M parameters)."""

    image_size: int = 48       # input image side in pixels; a multiple of patch_size
    patch_size: int = 8        # ViT patch side in pixels; image tokens = (image_size / patch_size)²
    vision_hidden: int = 128   # CLIP vision tower width; a multiple of vision_heads
    vision_layers: int = 2     # CLIP encoder layers (the last one feeds the projector: vision_feature_layer=-1)
    vision_heads: int = 4      # CLIP attention heads
    vision_mlp: int = 512      # CLIP MLP width
    text_hidden: int = 192     # Llama LM width; a multiple of text_heads
    text_layers: int = 4       # Llama decoder layers
    text_heads: int = 4        # Llama attention heads (no grouped KV)
    text_mlp: int = 0          # Llama MLP width; 0 means round(8/3 · text_hidden)
    max_positions: int = 512   # longest sequence (image tokens + text) the LM's RoPE is configured for

    def __post_init__(self):
        for name, value in vars(self).items():
            if name != "text_mlp" and value <= 0:
                raise ValueError(f"TinyLlavaConfig.{name} must be positive, got {value}")
        if self.text_mlp < 0:
            raise ValueError(
                f"TinyLlavaConfig.text_mlp must be >= 0 (0 means round(8/3 * text_hidden)), got {self.text_mlp}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"TinyLlavaConfig.image_size={self.image_size} must be a multiple of patch_size={self.patch_size}"
            )
        for side in ("vision", "text"):
            hidden, heads = getattr(self, f"{side}_hidden"), getattr(self, f"{side}_heads")
            if hidden % heads:
                raise ValueError(f"TinyLlavaConfig.{side}_hidden={hidden} must be a multiple of {side}_heads={heads}")
        if self.n_image_tokens >= self.max_positions:
            raise ValueError(
                f"TinyLlavaConfig: {self.n_image_tokens} image tokens leave no room for text in "
                f"max_positions={self.max_positions}; raise max_positions or patch_size"
            )

    @property
    def n_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def text_intermediate(self) -> int:
        return self.text_mlp or round(8 / 3 * self.text_hidden)


def _llava_config(processor: LlavaProcessor, cfg: TinyLlavaConfig) -> LlavaConfig:
    tok = processor.tokenizer
    vision = CLIPVisionConfig(
        image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_mlp, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_positions, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=cfg.n_image_tokens, vision_feature_layer=-1,  # -2 would skip one of only 2 layers
        vision_feature_select_strategy="default", tie_word_embeddings=True,
    )


def build_tiny_llava(processor: LlavaProcessor, cfg: TinyLlavaConfig, seed: int) -> LlavaForConditionalGeneration:
    """A randomly initialised tiny LLaVA matching `processor`; the same seed gives bit-identical weights.

    The global torch RNG is left as it was.
    """
    if processor.patch_size != cfg.patch_size or processor.image_processor.size["height"] != cfg.image_size:
        raise ValueError(
            f"processor (image {processor.image_processor.size['height']} px, patch {processor.patch_size}) does not "
            f"match TinyLlavaConfig (image {cfg.image_size} px, patch {cfg.patch_size})"
        )
    config = _llava_config(processor, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    tok = processor.tokenizer
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("built tiny LLaVA: %d image tokens, %.2f M parameters", cfg.n_image_tokens, n_params / 1e6)
    return model.eval()


def image_token_id(model: PreTrainedModel) -> int:
    """The id of the `<image>` placeholder token in `model`'s vocabulary (LLaVA and LLaVA-NeXT)."""
    return int(model.config.image_token_id)


def lora_target_modules() -> str:
    """A peft `target_modules` regex matching the LM's projections only, sparing the vision tower (NOTES §5)."""
    return LORA_TARGET_REGEX


# ----------------------------------------------------------------------------------------------------- save / load


def save_llava(model: PreTrainedModel, processor: ProcessorMixin, path: str | os.PathLike) -> Path:
    """Write `model` and `processor` as a normal Hugging Face directory at `path`, atomically.

    Both are saved into a temp dir beside `path`, which is renamed onto `path` only once complete; an existing
    `path` is replaced only then. A failure at any point leaves `path` as it was.
    """
    path = Path(path)
    logger.info("saving LLaVA model and processor to %s", path)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return path


def read_model_type(path: Path) -> str:
    config_file = path / "config.json"
    if not path.is_dir():
        raise DataError(f"{path}: checkpoint directory not found")
    if not config_file.is_file():
        raise DataError(f"{path}: no config.json, so this is not a Hugging Face checkpoint directory")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{config_file}: malformed config.json: {e}") from e
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in LLAVA_CLASSES:
        raise DataError(
            f"{path} is not a LLaVA checkpoint: model_type={model_type!r} (expected one of {sorted(LLAVA_CLASSES)})"
        )
    return model_type


def _load_processor(path: Path) -> ProcessorMixin:
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: could not load the processor (tokenizer + image processor files): {e}") from e
    if not isinstance(processor, ProcessorMixin) or getattr(processor, "image_processor", None) is None:
        raise DataError(
            f"{path}: processor files are missing (found only {type(processor).__name__}); save the LLaVA "
            "processor beside the model (processor_config.json / preprocessor_config.json and tokenizer files)"
        )
    # Batched generation needs the prompt flush against the answer (NOTES §10).
    processor.tokenizer.padding_side = "left"
    return processor


def load_llava(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a local LLaVA 1.5 / LLaVA-NeXT 1.6 checkpoint (ours or Hugging Face's) and its processor, in eval mode.

    Raises DataError naming `path` when the directory, its config.json or its processor files are missing or
    malformed, or when it holds another architecture. The tokenizer is switched to left padding.
    """
    path = Path(path)
    model_type = read_model_type(path)
    processor = _load_processor(path)
    kwargs = {"local_files_only": True} | ({"dtype": dtype} if dtype is not None else {})
    logger.info("loading %s checkpoint from %s", model_type, path)
    try:
        model = LLAVA_CLASSES[model_type].from_pretrained(path, **kwargs)
    except OSError as e:
        raise DataError(f"{path}: could not load the {model_type} weights: {e}") from e
    if model.generation_config.pad_token_id is None:
        pad = processor.tokenizer.pad_token_id
        model.generation_config.pad_token_id = pad if pad is not None else processor.tokenizer.eos_token_id
    return model.to(device).eval(), processor
