"""Tokenizer, processor, tiny LLaVA, atomic save and `load_llava` on our model and on real LLaVA 1.5 / NeXT layouts.

Run: python -m pytest tests/test_model.py -q
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
)

from mmstudy.io import DataError
from mmstudy.models.generation import chat_prompt, generate, image_token_counts, sample_image_keep
from mmstudy.models.llava import (
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    TinyLlavaConfig,
    build_processor,
    build_tiny_llava,
    build_tokenizer,
    image_token_id,
    load_llava,
    lora_target_modules,
    save_llava,
)

CORPUS = [
    "Describe the image.",
    "There are two objects. At the top left a red circle. At the center a blue star.",
    "Is there a fork in the image?",
    "Yes, there is a fork.",
    "No, there is not!",
]
TINY = dict(image_size=16, patch_size=8, vision_hidden=32, vision_heads=2, vision_mlp=64, text_hidden=32,
            text_layers=2, text_heads=2, max_positions=128)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return build_processor(tokenizer, image_size=16, patch_size=8)


@pytest.fixture(scope="module")
def tiny(processor):
    return build_tiny_llava(processor, TinyLlavaConfig(**TINY), seed=0)


def _images(n: int = 2) -> list[Image.Image]:
    return [Image.new("RGB", (16 + 4 * i, 16), (40 * i, 200, 255 - 40 * i)) for i in range(n)]


# ----------------------------------------------------------------------------------------------------- tokenizer


def test_vocab_is_deterministic_with_specials_first_and_ties_sorted():
    a, b = build_tokenizer(CORPUS), build_tokenizer(list(reversed(CORPUS)))
    assert a.get_vocab() == b.get_vocab()
    assert [a.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    tie = build_tokenizer(["b c a"])
    assert tie.convert_ids_to_tokens([7, 8, 9]) == ["a", "b", "c"]


def test_tokenizer_lowercases_and_isolates_punctuation(tokenizer):
    ids = tokenizer("Yes, there is a FORK.", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["yes", ",", "there", "is", "a", "fork", "."]
    assert tokenizer.convert_tokens_to_ids("bicycle") == tokenizer.unk_token_id


@pytest.mark.parametrize("text", ["Yes, there is a fork.", "Is there a fork in the image?", "No, there is not!"])
def test_decode_is_readable_and_round_trips(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.lower()


def test_special_tokens_are_atomic_and_skipped(tokenizer):
    text = "<s>USER: <image> is there a fork ? ASSISTANT: yes, there is a fork.</s>"
    ids = tokenizer(text)["input_ids"]
    assert ids[:3] == [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("USER:"), 4]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "is there a fork? yes, there is a fork."


def test_left_padding_survives_save_and_reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert reloaded.padding_side == "left"
    batch = reloaded(["a fork", "is there a fork"], padding=True)
    assert batch["input_ids"][0][:2] == [reloaded.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1, 1]
    assert reloaded.get_vocab() == tokenizer.get_vocab()


# ----------------------------------------------------------------------------------------------------- processor


def test_processor_expands_image_token_and_renders_chat(processor):
    prompt = chat_prompt(processor, "is there a fork ?")
    assert prompt == "<s>USER: <image> is there a fork ? ASSISTANT:"
    enc = processor(images=_images(1), text=[prompt], return_tensors="pt")
    assert (enc["input_ids"] == processor.image_token_id).sum() == (16 // 8) ** 2
    assert enc["pixel_values"].shape == (1, 3, 16, 16)
    assert isinstance(processor.image_processor, CLIPImageProcessorPil)


# ----------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(image_size=50, patch_size=8), "multiple of patch_size"),
        (dict(text_hidden=30, text_heads=4), "text_hidden=30 must be a multiple of text_heads=4"),
        (dict(vision_hidden=30, vision_heads=4), "vision_hidden=30"),
        (dict(text_layers=0), "text_layers must be positive"),
        (dict(text_mlp=-1), "text_mlp must be >= 0"),
        (dict(max_positions=36), "max_positions"),
    ],
)
def test_tiny_config_rejects_bad_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        TinyLlavaConfig(**overrides)


def test_tiny_config_derived_sizes():
    cfg = TinyLlavaConfig()
    assert (cfg.n_image_tokens, cfg.text_intermediate) == (36, 512)
    assert TinyLlavaConfig(text_mlp=100).text_intermediate == 100


# ----------------------------------------------------------------------------------------------------- model


def test_build_tiny_llava_is_deterministic_and_tied(processor, tiny):
    same = build_tiny_llava(processor, TinyLlavaConfig(**TINY), seed=0)
    other = build_tiny_llava(processor, TinyLlavaConfig(**TINY), seed=1)
    sd, sd_same, sd_other = tiny.state_dict(), same.state_dict(), other.state_dict()
    assert all(torch.equal(sd[k], sd_same[k]) for k in sd)
    assert not all(torch.equal(sd[k], sd_other[k]) for k in sd)
    assert tiny.lm_head.weight.data_ptr() == tiny.get_input_embeddings().weight.data_ptr()
    assert tiny.config.image_seq_length == 4 and tiny.config.vision_feature_layer == -1
    tok = processor.tokenizer
    gc = tiny.generation_config
    assert (gc.bos_token_id, gc.eos_token_id, gc.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, 0)
    assert image_token_id(tiny) == tok.convert_tokens_to_ids(IMAGE_TOKEN)


def test_build_tiny_llava_rejects_mismatched_processor(processor):
    with pytest.raises(ValueError, match="does not match"):
        build_tiny_llava(processor, TinyLlavaConfig(**{**TINY, "image_size": 24}), seed=0)


def test_lora_regex_spares_vision_tower(tiny):
    names = [n for n, _ in tiny.named_modules() if re.fullmatch(lora_target_modules(), n)]
    assert names and all("language_model" in n for n in names)
    assert any(n.endswith("q_proj") for n in names) and any(n.endswith("down_proj") for n in names)
    assert any("vision_tower" in n and n.endswith("q_proj") for n, _ in tiny.named_modules())


def test_save_load_round_trip_is_bit_identical(tiny, processor, tmp_path):
    path = save_llava(tiny, processor, tmp_path / "ckpt")
    model, proc = load_llava(path)
    assert isinstance(model, LlavaForConditionalGeneration) and isinstance(proc, LlavaProcessor)
    assert proc.tokenizer.padding_side == "left" and not model.training
    prompts = [chat_prompt(proc, "describe the image ."), chat_prompt(proc, "is there a fork in the image ?")]
    with torch.no_grad():
        before = tiny(**processor(images=_images(), text=prompts, return_tensors="pt", padding=True)).logits
        after = model(**proc(images=_images(), text=prompts, return_tensors="pt", padding=True)).logits
    assert torch.equal(before, after)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_load_with_dtype_and_generate(tiny, processor, tmp_path):
    save_llava(tiny, processor, tmp_path / "ckpt")
    model, proc = load_llava(tmp_path / "ckpt", device="cpu", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    answers = generate(model, proc, _images(), [chat_prompt(proc, "describe the image .")] * 2, max_new_tokens=3,
                       progress=False)
    assert len(answers) == 2


def test_save_is_atomic_on_failure(tiny, processor, tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    save_llava(tiny, processor, target)
    old_files = sorted(p.name for p in target.iterdir())

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(processor), "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_llava(tiny, processor, target)
    with pytest.raises(RuntimeError, match="disk full"):
        save_llava(tiny, processor, tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dir, no half-written "fresh"
    assert sorted(p.name for p in target.iterdir()) == old_files
    monkeypatch.undo()
    load_llava(target)  # the old checkpoint is still complete


def test_save_replaces_existing_checkpoint(tiny, processor, tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    save_llava(tiny, processor, target)
    assert not (target / "stale.txt").exists() and (target / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


# ----------------------------------------------------------------------------------------------------- load errors


def test_load_missing_dir(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nope"))):
        load_llava(tmp_path / "nope")


def test_load_dir_without_config(tmp_path):
    with pytest.raises(DataError, match="no config.json"):
        load_llava(tmp_path)


def test_load_rejects_other_architectures(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path} is not a LLaVA checkpoint: model_type='bert'")):
        load_llava(tmp_path)


def test_load_rejects_corrupt_config(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llava", ')
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "config.json")) + ".*malformed"):
        load_llava(tmp_path)


def test_load_requires_processor_files(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    with pytest.raises(DataError, match=re.escape(str(tmp_path)) + ".*processor"):
        load_llava(tmp_path)


def test_load_requires_image_processor(tiny, tokenizer, tmp_path):
    tiny.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(DataError, match=re.escape(str(tmp_path)) + ".*processor"):
        load_llava(tmp_path)


# ----------------------------------------------------------------------------------------------------- real layouts

# The llava-hf LLaVA 1.5 template: images first, then text, "USER: <image>\n... ASSISTANT:".
LLAVA15_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _vision_and_text(tokenizer):
    vision = CLIPVisionConfig(image_size=16, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=2, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return vision, text


def _real_llava15(tokenizer):
    """LLaVA 1.5 layout: untied LM head, vision_feature_layer -2, resize shortest edge + center crop, no pad id."""
    vision, text = _vision_and_text(tokenizer)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id_of(tokenizer),
                         image_seq_length=4, vision_feature_layer=-2)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA15_TEMPLATE)
    return LlavaForConditionalGeneration(config), processor


def _real_llava_next(tokenizer):
    """LLaVA-NeXT layout: AnyRes with tiny grid pinpoints (base view + up to 2x2 crops of 16 px)."""
    vision, text = _vision_and_text(tokenizer)
    pinpoints = [[16, 32], [32, 16], [32, 32]]
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=image_token_id_of(tokenizer),
                             image_grid_pinpoints=pinpoints, image_seq_length=4, vision_feature_layer=-2)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                                 image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA15_TEMPLATE)
    return LlavaNextForConditionalGeneration(config), processor


def image_token_id_of(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


@pytest.mark.parametrize("build, cls", [(_real_llava15, LlavaForConditionalGeneration),
                                        (_real_llava_next, LlavaNextForConditionalGeneration)])
def test_load_and_generate_on_real_llava_layouts(tokenizer, tmp_path, build, cls):
    torch.manual_seed(0)
    model, processor = build(tokenizer)
    processor.tokenizer.padding_side = "right"  # load_llava must force left padding anyway
    save_llava(model, processor, tmp_path / "ckpt")
    processor.tokenizer.padding_side = "left"
    loaded, proc = load_llava(tmp_path / "ckpt")
    assert isinstance(loaded, cls) and type(proc) is type(processor)
    assert proc.tokenizer.padding_side == "left"
    assert loaded.generation_config.pad_token_id == tokenizer.pad_token_id
    prompt = chat_prompt(proc, "describe the image .")
    assert prompt == "USER: <image>\ndescribe the image . ASSISTANT:"
    images = [Image.new("RGB", (40, 20), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    prompts = [prompt, chat_prompt(proc, "is there a fork ?")]
    answers = generate(loaded, proc, images, prompts, max_new_tokens=4, progress=False)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    counts = image_token_counts(proc, images, prompts)
    assert counts == [4, 4] if cls is LlavaForConditionalGeneration else counts[0] > counts[1] > 4  # AnyRes
    keep = [sample_image_keep(n, 0.0, seed=i) for i, n in enumerate(counts)]
    assert generate(loaded, proc, images, prompts, max_new_tokens=4, progress=False, image_keep=keep) == answers
    blind = [torch.zeros(n, dtype=torch.bool) for n in counts]
    assert len(generate(loaded, proc, images, prompts, max_new_tokens=4, progress=False, image_keep=blind)) == 2


def test_load_hub_style_split_processor_files(tokenizer, tmp_path):
    """llava-hf repos split the processor: preprocessor_config.json, a kwargs-only processor_config.json and
    chat_template.json (written here by hand, as they are on the hub)."""
    torch.manual_seed(0)
    model, processor = _real_llava15(tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)
    kwargs = {"processor_class": "LlavaProcessor", "patch_size": 8, "vision_feature_select_strategy": "default",
              "num_additional_image_tokens": 1}
    (tmp_path / "processor_config.json").write_text(json.dumps(kwargs))
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": LLAVA15_TEMPLATE}))
    loaded, proc = load_llava(tmp_path)
    assert isinstance(proc, LlavaProcessor) and proc.num_additional_image_tokens == 1
    prompt = chat_prompt(proc, "describe the image .")
    assert len(generate(loaded, proc, _images(1), [prompt], max_new_tokens=3, progress=False)) == 1
