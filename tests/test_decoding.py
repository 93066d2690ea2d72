"""Decoding methods without training: VCD's contrastive logits and PAI's boost against hand-computed values, the
option's parsing, and the decoding loop against greedy `generate` on the smoke model."""

import math

import pytest
import torch

from mmstudy.models.decoding import (
    Decoding,
    boost_image_attention,
    contrastive_logits,
    decode,
    noise_transforms,
    parse_decoding,
    plausible,
)


def test_plausibility_keeps_tokens_within_beta_of_the_best():
    logits = torch.tensor([[math.log(0.6), math.log(0.3), math.log(0.06), math.log(0.04)]])
    assert plausible(logits, 0.1).tolist() == [[True, True, True, False]]     # 0.06 >= 0.1 x 0.6 > 0.04
    assert plausible(logits, 0.5).tolist() == [[True, True, False, False]]
    assert plausible(logits, 0.0).all() and plausible(logits, 1.0).sum() == 1


def test_contrastive_logits_by_hand():
    clean, noised = torch.tensor([[2.0, 1.0, -3.0]]), torch.tensor([[1.0, 1.5, -3.0]])
    out = contrastive_logits(clean, noised, alpha=1.0, beta=0.1)
    # (1 + 1) x clean - 1 x noised = [3.0, 0.5, -3.0]; p(-3) / p(2) = e^-5 < 0.1: cut
    assert out[0, :2].tolist() == [3.0, 0.5] and out[0, 2] == float("-inf")
    assert torch.equal(contrastive_logits(clean, noised, alpha=0.0, beta=0.0), clean)     # no contrast: the model
    with pytest.raises(ValueError, match="alpha"):
        contrastive_logits(clean, noised, alpha=-1)
    with pytest.raises(ValueError, match="differ"):
        contrastive_logits(clean, noised[:, :2])


def test_boost_raises_the_last_querys_image_logits_by_alpha_times_their_size():
    scores = torch.tensor([[[[1.0, -2.0, 0.5], [2.0, -1.0, -4.0]]]])       # (1 batch, 1 head, 2 queries, 3 keys)
    image = torch.tensor([[False, True, True]])
    out = boost_image_attention(scores, image, alpha=0.5)
    assert out[0, 0, 0].tolist() == [1.0, -2.0, 0.5]                       # earlier queries: unchanged
    assert out[0, 0, 1].tolist() == [2.0, -1.0 + 0.5, -4.0 + 2.0]          # s + 0.5 |s| on image keys only
    with pytest.raises(ValueError, match="do not match"):
        boost_image_attention(scores, image[:, :2], 0.5)


def test_decoding_options_parse_print_and_refuse_what_they_do_not_know():
    vcd = parse_decoding("vcd:alpha=0.5,noise_steps=200")
    assert (vcd.alpha, vcd.beta, vcd.noise_steps) == (0.5, 0.1, 200)
    assert str(vcd) == "vcd:alpha=0.5,beta=0.1,noise_steps=200"
    assert parse_decoding(str(vcd)) == vcd and parse_decoding("greedy") == Decoding()
    pai = parse_decoding("pai")
    assert (pai.alpha, pai.gamma, pai.start_layer) == (0.2, 1.1, 2) and pai.contrast_weight == pytest.approx(0.1)
    for bad, match in (("beam", "unknown method"), ("vcd:gamma=2", "not a setting of vcd"),
                       ("pai:alpha=x", "must be a number"), ("vcd:beta=2", "0 <= beta <= 1"),
                       ("pai:gamma=0.5", "gamma >= 1"), ("greedy:alpha=1", "not a setting")):
        with pytest.raises(ValueError, match=match):
            parse_decoding(bad)


@pytest.fixture(scope="module")
def questions(smoke_world):
    from mmstudy import io

    prompts = io.read_jsonl(smoke_world / "caption_eval.jsonl")[:5]
    images = [io.load_image(smoke_world / "images" / p["image"]) for p in prompts]
    return images, [p["prompt"] for p in prompts]


@pytest.mark.parametrize("spec", ["vcd:alpha=0,beta=0", "pai:alpha=0,gamma=1,beta=0"])
def test_decoding_at_zero_strength_is_greedy_decoding(smoke_model, questions, spec):
    """With no contrast, no cut-off and no boost, the loop (KV cache, padding, stops) gives `generate`'s answers."""
    from mmstudy.models.generation import chat_prompt, generate

    model, processor, _ = smoke_model
    images, questions = questions
    prompts = [chat_prompt(processor, q) for q in questions]
    noise = noise_transforms(500, range(len(prompts)))
    greedy = generate(model, processor, images, prompts, max_new_tokens=24, batch_size=3, stop_after=".",
                      progress=False)
    found = decode(model, processor, images, prompts, parse_decoding(spec), max_new_tokens=24, batch_size=3,
                   contrast_pixels=noise, stop_after=".", progress=False)
    assert found == greedy and len(set(found)) > 1


def test_vcd_and_pai_take_the_contrasted_argmax(smoke_model, questions, monkeypatch):
    """Each step's token is the argmax of `contrastive_logits` over the two halves' logits; PAI's boost reaches the
    attention of the layers from `start_layer` on, of the first half only."""
    from mmstudy.models import decoding
    from mmstudy.models.generation import chat_prompt

    model, processor, _ = smoke_model
    images, questions = questions
    prompts = [chat_prompt(processor, q) for q in questions[:2]]
    seen, boosted_calls = [], []
    real, real_boost = decoding.contrastive_logits, decoding.boost_image_attention

    def spy(a, b, alpha, beta):
        seen.append((a.clone(), b.clone(), alpha, beta))
        return real(a, b, alpha, beta)

    def spy_boost(scores, keys, alpha):
        boosted_calls.append(keys.clone())
        return real_boost(scores, keys, alpha)

    monkeypatch.setattr(decoding, "contrastive_logits", spy)
    monkeypatch.setattr(decoding, "boost_image_attention", spy_boost)
    noise = noise_transforms(500, [0, 1])
    vcd = decode(model, processor, images[:2], prompts, parse_decoding("vcd"), max_new_tokens=8, batch_size=2,
                 contrast_pixels=noise, progress=False)
    assert all(alpha == 1.0 and beta == 0.1 and not torch.equal(a, b) for a, b, alpha, beta in seen)
    assert len(vcd) == 2 and seen
    seen.clear()
    decode(model, processor, images[:2], prompts, parse_decoding("pai:alpha=0.5,gamma=2"), max_new_tokens=8,
           batch_size=2, progress=False)
    assert all(alpha == pytest.approx(1.0) for _, _, alpha, _ in seen)
    layers = model.config.text_config.num_hidden_layers
    assert len(boosted_calls) == len(seen) * (layers - 2)                 # every step, layers 2.. only
    assert all(k[:2].any(-1).all() and not k[2:].any() for k in boosted_calls)
    assert model.config.text_config._attn_implementation != decoding.ATTENTION   # restored


def test_eval_decodes_with_the_option_and_records_it(smoke_world, base_dir, tmp_path, capsys):
    from mmstudy import io
    from mmstudy.cli import main

    args = ["-q", "eval", "--model", str(base_dir), "--world", str(smoke_world), "--benchmarks", "pope,chair",
            "--limit", "4"]
    assert main(args + ["--out", str(tmp_path / "greedy" / "results.json")]) == 0
    assert main(args + ["--decoding", "vcd:alpha=2", "--out", str(tmp_path / "vcd" / "results.json")]) == 0
    made = io.read_json(tmp_path / "vcd" / "results.json")
    assert made["manifest"]["params"]["decoding"] == "vcd:alpha=2,beta=0.1,noise_steps=500"
    greedy, vcd = (io.read_jsonl(tmp_path / d / "samples.jsonl") for d in ("greedy", "vcd"))
    assert len(vcd) == len(greedy) == 3 * 4 + 4 and [s["answer"] for s in vcd] != [s["answer"] for s in greedy]
    with pytest.raises(SystemExit):
        main(args + ["--decoding", "vcd:gamma=1", "--out", str(tmp_path / "bad" / "results.json")])
    assert "not a setting of vcd" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_yes_no_margins_are_the_first_steps_log_odds(smoke_model, smoke_world):
    """The margins (batches of 5, left-padded) equal the yes-minus-no logits of `generate`'s first step (one batch
    of 12), token by token (the world's tokenizer has one token per word)."""
    from mmstudy import io
    from mmstudy.benchmarks.pope import load_pope_questions
    from mmstudy.models.decoding import word_token_ids, yes_no_margins
    from mmstudy.models.generation import chat_prompt, prepare_inputs

    model, processor, _ = smoke_model
    questions = load_pope_questions(next((smoke_world / "pope").glob("*_pope_adversarial.json")))[:12]
    images = [io.load_image(smoke_world / "images" / q["image"]) for q in questions]
    prompts = [chat_prompt(processor, q["text"]) for q in questions]
    margins = yes_no_margins(model, processor, images, prompts, batch_size=5, progress=False)
    yes, no = (word_token_ids(processor.tokenizer, w) for w in ("yes", "no"))
    assert len(yes) == len(no) == 1
    with torch.no_grad():
        first = model.generate(**prepare_inputs(processor, images, prompts), max_new_tokens=1, do_sample=False,
                               output_scores=True, return_dict_in_generate=True).scores[0]
    assert margins == pytest.approx((first[:, yes[0]] - first[:, no[0]]).tolist(), abs=1e-4)
    with pytest.raises(ValueError, match="no token of the tokenizer reads"):
        word_token_ids(processor.tokenizer, "perhaps-not")
