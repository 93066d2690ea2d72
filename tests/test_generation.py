"""Batched generation and BDHS image-token masking (docs/bdhs.md) on a tiny random LLaVA.

Run: python -m pytest tests/test_generation.py -q
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmstudy.models.generation import chat_prompt, generate, prepare_inputs, sample_image_keep
from mmstudy.models.llava import (
    SPECIAL_TOKENS,
    TinyLlavaConfig,
    build_processor,
    build_tiny_llava,
    build_tokenizer,
    image_token_id,
)

CORPUS = [
    "describe the image .",
    "there are two objects . at the top left a red circle . at the center a blue star .",
    "is there a green square in the image ?",
    "how many objects are there ?",
    "yes , there is a fork . no , there is not .",
]
N_IMAGE_TOKENS = 9  # 24 px / patch 8 -> 3 x 3


@pytest.fixture(scope="module")
def processor():
    return build_processor(build_tokenizer(CORPUS), image_size=24, patch_size=8)


@pytest.fixture(scope="module")
def model(processor):
    cfg = TinyLlavaConfig(image_size=24, patch_size=8, vision_hidden=32, vision_heads=2, vision_mlp=64,
                          text_hidden=32, text_layers=2, text_heads=2, max_positions=128)
    model = build_tiny_llava(processor, cfg, seed=3)
    # A random model with tied embeddings mostly repeats the last prompt token (ASSISTANT:), which decodes to "".
    # An untied random head with zero special-token rows (logit 0, so never chosen over the best word) gives varied,
    # non-empty answers. (Zeroing the shared rows instead would zero the <s>/USER: states and hide RoPE shifts.)
    head = torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(0))
    head[: len(SPECIAL_TOKENS)] = 0.0
    model.lm_head.weight = torch.nn.Parameter(head)
    # Sharpen the LM's attention (random init gives near-uniform attention, blind to positions and to the image),
    # so that RoPE shifts and image masking move the logits far above float noise.
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight *= 16.0
            layer.self_attn.k_proj.weight *= 16.0
    return model


@pytest.fixture(scope="module")
def images():
    colours = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (250, 250, 0)]
    out = []
    for i, c in enumerate(colours):
        im = Image.new("RGB", (24, 24), (10, 10, 10))
        im.paste(c, (i * 4, i * 3, i * 4 + 10, i * 3 + 12))
        out.append(im)
    return out


@pytest.fixture(scope="module")
def prompts(processor):
    questions = ["describe the image .", "how many objects are there ?", "is there a green square in the image ?",
                 "is there a red circle at the top left ?"]
    return [chat_prompt(processor, q) for q in questions]


# ----------------------------------------------------------------------------------------------------- BDHS mask


def test_sample_image_keep_extremes():
    assert sample_image_keep(50, 0.0, seed=1).all()
    assert not sample_image_keep(50, 1.0, seed=1).any()
    assert sample_image_keep(0, 0.5, seed=1).shape == (0,)
    assert sample_image_keep(7, 0.5, seed=1).dtype == torch.bool


def test_sample_image_keep_keeps_about_one_percent_at_099():
    kept = sample_image_keep(10_000, 0.99, seed=0).float().mean().item()
    assert 0.007 < kept < 0.013


def test_sample_image_keep_is_deterministic_per_seed():
    assert torch.equal(sample_image_keep(500, 0.5, seed=4), sample_image_keep(500, 0.5, seed=4))
    assert not torch.equal(sample_image_keep(500, 0.5, seed=4), sample_image_keep(500, 0.5, seed=5))


@pytest.mark.parametrize("rho", [-0.1, 1.5])
def test_sample_image_keep_rejects_bad_threshold(rho):
    with pytest.raises(ValueError, match="rho_th"):
        sample_image_keep(10, rho, seed=0)


# ----------------------------------------------------------------------------------------------------- inputs


def test_chat_prompt(processor):
    assert chat_prompt(processor, "describe the image .") == "<s>USER: <image> describe the image . ASSISTANT:"


def test_prepare_inputs_masks_only_dropped_image_tokens(processor, images, prompts):
    keep = [torch.ones(N_IMAGE_TOKENS, dtype=torch.bool), sample_image_keep(N_IMAGE_TOKENS, 0.5, seed=2)]
    plain = prepare_inputs(processor, images[:2], prompts[:2])
    masked = prepare_inputs(processor, images[:2], prompts[:2], image_keep=keep)
    assert torch.equal(plain["position_ids"], masked["position_ids"])
    image_pos = masked["input_ids"] == processor.image_token_id
    assert torch.equal(masked["attention_mask"][~image_pos], plain["attention_mask"][~image_pos])
    assert torch.equal(masked["attention_mask"][1][image_pos[1]], keep[1].long())
    # Left padding: example 0 has the shorter prompt, its position ids start at 0 on its first real token.
    first = int(plain["attention_mask"][0].argmax())
    assert first > 0 and plain["position_ids"][0, first] == 0 and plain["input_ids"][0, 0] == 0


def test_wrong_keep_length_raises(model, processor, images, prompts):
    keep = [torch.ones(N_IMAGE_TOKENS, dtype=torch.bool), torch.ones(N_IMAGE_TOKENS - 1, dtype=torch.bool)]
    with pytest.raises(ValueError, match=r"image_keep\[1\] has 8 entries but example 1 has 9 image tokens"):
        generate(model, processor, images[:2], prompts[:2], image_keep=keep, max_new_tokens=2, progress=False)
    with pytest.raises(ValueError, match="2 masks for 3 prompts"):
        generate(model, processor, images[:3], prompts[:3], image_keep=keep, max_new_tokens=2, progress=False)


# ----------------------------------------------------------------------------------------------------- generate


def _gen(model, processor, images, prompts, **kw):
    return generate(model, processor, images, prompts, **{"max_new_tokens": 8, "progress": False, **kw})


def test_kv_cache_does_not_change_greedy_output(model, processor, images, prompts):
    with_cache = _gen(model, processor, images, prompts)
    assert with_cache == _gen(model, processor, images, prompts, use_cache=False)
    assert any(with_cache)


def test_keep_all_equals_no_mask(model, processor, images, prompts):
    keep = [sample_image_keep(N_IMAGE_TOKENS, 0.0, seed=i) for i in range(len(prompts))]
    assert _gen(model, processor, images, prompts, image_keep=keep) == _gen(model, processor, images, prompts)


def test_batched_equals_one_by_one(model, processor, images, prompts):
    batched = _gen(model, processor, images, prompts, batch_size=4)
    single = [_gen(model, processor, [im], [p])[0] for im, p in zip(images, prompts)]
    assert batched == single
    assert _gen(model, processor, images, prompts, batch_size=3) == batched


def test_masking_image_tokens_changes_the_logits(model, processor, images, prompts):
    none_kept = [torch.zeros(N_IMAGE_TOKENS, dtype=torch.bool)] * 2
    with torch.no_grad():
        plain = model(**prepare_inputs(processor, images[:2], prompts[:2])).logits[:, -1]
        masked = model(**prepare_inputs(processor, images[:2], prompts[:2], image_keep=none_kept)).logits[:, -1]
    assert (plain - masked).abs().max() > 1e-2
    blind = _gen(model, processor, images, prompts, image_keep=[none_kept[0]] * len(prompts))
    assert blind != _gen(model, processor, images, prompts)


def _text_only_logits(model, input_ids, position_ids):
    """Reference: the LM on the sequence with the image tokens deleted, at the given positions -> (T, V)."""
    with torch.no_grad():
        out = model(input_ids=input_ids[None], position_ids=position_ids[None],
                    attention_mask=torch.ones_like(input_ids)[None])
    return out.logits[0]


def test_masked_generation_equals_text_only_model_at_unshifted_positions(model, processor, images, prompts):
    """All image tokens hidden == the image tokens deleted but the positions after them kept (not shifted).

    Checked step by step against generate's raw logits, for a left-padded batch of two prompt lengths, through the
    KV-cached decode. The same reference with contiguous (shifted) positions must NOT match, so the check has teeth.
    """
    n_steps, token = 6, image_token_id(model)
    none_kept = [torch.zeros(N_IMAGE_TOKENS, dtype=torch.bool)] * 2
    inputs = prepare_inputs(processor, images[:2], prompts[:2], image_keep=none_kept)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n_steps, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    logits = torch.stack(out.logits, dim=1)  # (B, n_steps, V)
    prompt_len = inputs["input_ids"].shape[1]
    new_tokens = out.sequences[:, prompt_len:]
    assert new_tokens.shape == (2, n_steps)  # the test head never picks </s> (special-token rows are zero)
    for b in range(2):
        real = inputs["input_ids"][b] != processor.tokenizer.pad_token_id
        ids, positions = inputs["input_ids"][b][real], inputs["position_ids"][b][real]
        text = ids != token
        seq = torch.cat([ids[text], new_tokens[b, :-1]])
        gapped = torch.cat([positions[text], positions[-1] + torch.arange(1, n_steps)])
        ref = _text_only_logits(model, seq, gapped)[-n_steps:]
        torch.testing.assert_close(logits[b], ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(ref.argmax(-1), new_tokens[b])
        shifted = _text_only_logits(model, seq, torch.arange(len(seq)))[-n_steps:]
        assert (shifted - logits[b]).abs().max() > 1e-2
    answers = _gen(model, processor, images[:2], prompts[:2], image_keep=none_kept, max_new_tokens=n_steps)
    assert answers == [a.strip() for a in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def test_sampling_is_reproducible_per_seed_and_leaves_global_rng(model, processor, images, prompts):
    state = torch.get_rng_state()
    a = _gen(model, processor, images, prompts, do_sample=True, temperature=5.0, seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    assert a == _gen(model, processor, images, prompts, do_sample=True, temperature=5.0, seed=11)
    assert a != _gen(model, processor, images, prompts, do_sample=True, temperature=5.0, seed=12)


def test_generate_validates_arguments(model, processor, images, prompts):
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        _gen(model, processor, images[:2], prompts[:3])
    with pytest.raises(ValueError, match="temperature"):
        _gen(model, processor, images, prompts, do_sample=True, temperature=0.0)
    assert _gen(model, processor, [], []) == []
