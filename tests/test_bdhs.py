"""BDHS: guidance, masking, the similarity loop, variants, determinism, resumable runs and bad input."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmstudy import io
from mmstudy.cli import main
from mmstudy.data.bdhs import (
    BDHSConfig,
    Example,
    ImageLoader,
    SentenceEmbedder,
    bdhs_generate,
    bdhs_statistics,
    draw_iteration,
    guidance_prefixes,
    load_examples,
    regenerate_rejected,
    run_bdhs,
    split_sentences,
    swap_yes_no,
)
from mmstudy.models.corruption import diffusion_noise


class WordOverlap:
    """A stand-in embedder: Jaccard overlap of word sets (cheap, deterministic). Records what it was asked."""

    name = "word-overlap"

    def __init__(self, fixed: float | None = None):
        self.fixed, self.calls = fixed, []

    def similarity(self, a, b):
        self.calls.append(len(a))
        if self.fixed is not None:
            return np.full(len(a), self.fixed)
        sets = [(set(x.lower().split()), set(y.lower().split())) for x, y in zip(a, b)]
        return np.array([len(x & y) / max(1, len(x | y)) for x, y in sets])


@pytest.fixture(scope="module")
def examples(smoke_world):
    return load_examples(smoke_world / "llava_instruct_train.json", smoke_world / "images", n=12, seed=0)


@pytest.fixture(scope="module")
def loader(smoke_world):
    return ImageLoader(smoke_world / "images")


@pytest.mark.parametrize("text, expected", [
    ("This is a kitchen. There is a cup! Is it red? Yes.", ["This is a kitchen.", "There is a cup!", "Is it red?",
                                                            "Yes."]),
    ("no sentence boundary here", ["no sentence boundary here"]),
    ("First line\nsecond line.", ["First line", "second line."]),
    ("3.5 km away. Done.", ["3.5 km away.", "Done."]),
    ("  ", []),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize("sentence, swapped", [
    ("Yes, there is a cup.", "No, there is a cup."),
    ("  no, there is none.", "  yes, there is none."),
    ("No.", "Yes."),
    ("Nothing else is there.", "Nothing else is there."),   # the paper's regex would make "Yesthing"
    ("There is no cup.", "There is no cup."),
])
def test_swap_yes_no(sentence, swapped):
    assert swap_yes_no(sentence) == swapped


def test_guidance_prefixes_cut_at_word_boundaries_with_ground_truth_context():
    chosen = "This is a kitchen scene. There is a large cup on the left. Yes, it is there."
    sentences = split_sentences(chosen)
    seen_cuts, swapped = set(), 0
    for seed in range(200):
        prefixes = guidance_prefixes(chosen, np.random.default_rng(seed))
        assert [ctx for ctx, _ in prefixes] == ["", sentences[0], " ".join(sentences[:2])]   # y+_{<k}, unswapped
        for (_, cut), sentence in zip(prefixes, sentences):
            words, cut_words = sentence.split(), cut.split()
            assert len(cut_words) < len(words)                  # the last word is always regenerated
            assert cut_words == words[:len(cut_words)] or cut_words[0] == "No,"
            seen_cuts.add(len(cut_words))
        swapped += prefixes[2][1].startswith("No,")
    assert 0 in seen_cuts and max(seen_cuts) == 7                # empty prefix allowed; up to n - 1 words (8)
    assert 50 < swapped < 100                                   # 200 x 0.5 x P(cut keeps the first word) = 75
    assert guidance_prefixes(chosen, np.random.default_rng(7)) == guidance_prefixes(chosen, np.random.default_rng(7))
    with pytest.raises(ValueError, match="empty"):
        guidance_prefixes("   ", np.random.default_rng(0))


def test_diffusion_noise_schedule():
    x = torch.zeros(3, 64, 64)
    assert torch.equal(diffusion_noise(x, 0, seed=1), x)
    noisy = diffusion_noise(x, 500, seed=1)
    assert torch.equal(noisy, diffusion_noise(x, 500, seed=1))
    # the schedule written out independently: beta_k = sigmoid(-6 + 12 k / 999) (5e-3 - 1e-5) + 1e-5
    k = np.arange(1000)
    beta = 1 / (1 + np.exp(6 - 12 * k / 999)) * (0.5e-2 - 1e-5) + 1e-5
    abar = np.cumprod(1 - beta)
    assert abar[500] == pytest.approx(0.745, abs=0.005)          # N = 500 keeps sqrt(0.745) = 86 % of the signal
    assert noisy.std().item() == pytest.approx((1 - abar[500]) ** 0.5, rel=0.03)   # zero input: pure noise
    ones = diffusion_noise(torch.ones(3, 64, 64), 999, seed=2)
    assert ones.mean().item() == pytest.approx(abar[999] ** 0.5, abs=0.02)


def test_guided_generation_keeps_the_ground_truth_prefixes(smoke_model, examples, loader):
    model, processor, _ = smoke_model
    cfg = BDHSConfig(rho_th=0.0, iterations=1, seed=3)
    results = bdhs_generate(model, processor, examples, cfg, WordOverlap(), loader, progress=False)
    assert len(results) == len(examples)
    for ex, r in zip(examples, results):
        assert r.guided and r.iterations == 1 and r.mask_kept == 1.0
        cuts = [cut for _, cut in draw_iteration(ex, 1, model.config.image_seq_length, cfg, guided=True).prefixes]
        assert r.rejected.startswith(cuts[0])
        assert all(cut in r.rejected for cut in cuts)


def test_runs_are_deterministic_and_one_pair_regenerates_alone(smoke_model, examples, loader):
    model, processor, _ = smoke_model
    cfg = BDHSConfig(rho_th=0.99, iterations=3, epsilon=0.6, seed=5)
    first = bdhs_generate(model, processor, examples, cfg, WordOverlap(), loader, progress=False)
    again = bdhs_generate(model, processor, examples, cfg, WordOverlap(), loader, batch_size=5, progress=False)
    alone = bdhs_generate(model, processor, examples[4:5], cfg, WordOverlap(), loader, progress=False)
    assert first == again and alone[0] == first[4]
    other = bdhs_generate(model, processor, examples, BDHSConfig(rho_th=0.99, iterations=3, epsilon=0.6, seed=6),
                          WordOverlap(), loader, progress=False)
    assert [r.rejected for r in other] != [r.rejected for r in first]


def test_only_failed_examples_are_regenerated_and_the_last_iteration_is_unguided(smoke_model, examples, loader):
    model, processor, _ = smoke_model
    always_similar = WordOverlap(fixed=0.99)
    results = bdhs_generate(model, processor, examples, BDHSConfig(iterations=3), always_similar, loader,
                            progress=False)
    assert always_similar.calls == [len(examples)] * 3
    assert all(r.iterations == 3 and not r.guided and not r.accepted for r in results)
    overlap = WordOverlap()
    results = bdhs_generate(model, processor, examples, BDHSConfig(iterations=4, epsilon=0.7), overlap, loader,
                            progress=False)
    assert overlap.calls == sorted(overlap.calls, reverse=True) and overlap.calls[0] == len(examples)
    for r in results:
        assert r.accepted == (r.similarity < 0.7)
        assert r.guided == (r.iterations < 4)


@pytest.mark.parametrize("variant", ["noise", "unguided", "povid"])
def test_variants(smoke_model, examples, loader, variant):
    model, processor, _ = smoke_model
    cfg = BDHSConfig(variant=variant, iterations=2, noise_steps=300)
    results = bdhs_generate(model, processor, examples, cfg, WordOverlap(), loader, progress=False)
    assert len(results) == len(examples) and all(isinstance(r.rejected, str) for r in results)
    if variant == "unguided":
        assert not any(r.guided for r in results) and all(r.mask_kept < 0.2 for r in results)
    if variant == "povid":   # teacher forcing: one predicted token per y+ token (special tokens are not decoded)
        assert all(r.iterations == 1 for r in results)
        tok = processor.tokenizer
        for ex, r in zip(examples, results):
            assert 0 < len(tok(r.rejected)["input_ids"]) <= len(tok(ex.chosen)["input_ids"]) + 1


def test_online_regeneration_varies_with_the_step(smoke_model, examples, loader):
    model, processor, _ = smoke_model
    cfg = BDHSConfig(rho_th=0.99, iterations=1)
    step1 = regenerate_rejected(model, processor, examples, cfg, WordOverlap(), loader, step=1)
    assert step1 == regenerate_rejected(model, processor, examples, cfg, WordOverlap(), loader, step=1)
    assert step1 != regenerate_rejected(model, processor, examples, cfg, WordOverlap(), loader, step=2)


def test_resumed_run_equals_an_uninterrupted_one(smoke_model, examples, loader, tmp_path):
    model, processor, _ = smoke_model
    cfg = BDHSConfig(rho_th=0.99, iterations=2, epsilon=0.6)
    full = tmp_path / "full.jsonl"
    stats = run_bdhs(model, processor, examples, cfg, WordOverlap(), loader, full, {"model": "m"}, chunk_size=5,
                     progress=False)
    lines = full.read_text().splitlines(keepends=True)
    assert len(lines) == len(examples) and stats["n"] == len(examples)
    record = json.loads(lines[0])
    assert set(record) == {"id", "image", "prompt", "chosen", "rejected", "source", "provenance"}
    assert {"generator", "config_hash", "seed", "iterations", "similarity", "mask_kept", "model"} <= set(
        record["provenance"])
    # an interrupted run: one chunk written, then a torn line, all in part.jsonl.partial (part.jsonl: not yet)
    part = tmp_path / "part.jsonl"
    part.with_name("part.jsonl.partial").write_text("".join(lines[:5]) + lines[5][:17])
    run_bdhs(model, processor, examples, cfg, WordOverlap(), loader, part, {"model": "m"}, chunk_size=5,
             progress=False)
    assert part.read_text() == full.read_text() and not part.with_name("part.jsonl.partial").exists()
    more = tmp_path / "more.jsonl"                  # a finished file asked for more examples grows the same way
    run_bdhs(model, processor, examples[:5], cfg, WordOverlap(), loader, more, {"model": "m"}, progress=False)
    run_bdhs(model, processor, examples, cfg, WordOverlap(), loader, more, {"model": "m"}, chunk_size=5,
             progress=False)
    assert more.read_text() == full.read_text()
    with pytest.raises(ValueError, match="another BDHS config"):
        run_bdhs(model, processor, examples, BDHSConfig(rho_th=0.5), WordOverlap(), loader, part, progress=False)
    # the pairs already written must come from this run's examples and model: the same id with another prompt,
    # or another model revision, is refused before anything is generated, and the file is left as it was
    before = part.read_text()
    edited = [dataclasses.replace(examples[2], prompt=examples[2].prompt + " Be brief."), *examples[3:]]
    with pytest.raises(ValueError, match=rf"part.jsonl, line 3 \(id '{examples[2].id}'\): prompt differs"):
        run_bdhs(model, processor, edited, cfg, WordOverlap(), loader, part, {"model": "m"}, progress=False)
    with pytest.raises(ValueError, match=r"line 1 .*provenance.model_revision is None, this run's is 'r2'"):
        run_bdhs(model, processor, examples, cfg, WordOverlap(), loader, part, {"model_revision": "r2"},
                 progress=False)
    assert part.read_text() == before


def test_statistics():
    cfg = BDHSConfig(iterations=3)
    prov = [{"similarity": s, "accepted": a, "iterations": i, "guided": g, "mask_kept": 0.0}
            for s, a, i, g in ((0.5, True, 1, True), (0.9, True, 2, True), (0.99, False, 3, False))]
    records = [{"chosen": "a b c d", "rejected": "a b", "provenance": p} for p in prov]
    s = bdhs_statistics(records, cfg)
    assert s["accepted_share_after_iteration"] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert s["length_ratio_mean"] == 0.5 and s["unguided_share"] == pytest.approx(1 / 3)
    assert sum(s["similarity_histogram"]["counts"]) == 3


def _write_sft(tmp_path, records):
    path = tmp_path / "sft.json"
    io.write_json(path, records)
    return path


def test_bad_input(smoke_world, tmp_path):
    image = next((smoke_world / "images").glob("train_*.png")).name
    good = {"id": "a", "image": image, "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                          {"from": "gpt", "value": "A cup."}]}
    root = smoke_world / "images"
    no_image = {"id": "b", "conversations": [{"from": "human", "value": "Describe."}, good["conversations"][1]]}
    with pytest.raises(io.DataError, match=r"sft.json, record 1 \(id='b'\): no field 'image'"):
        load_examples(_write_sft(tmp_path, [good, no_image]), root)
    no_token = dict(good, conversations=[{"from": "human", "value": "Describe."}, good["conversations"][1]])
    with pytest.raises(io.DataError, match="lacks the <image> placeholder"):
        load_examples(_write_sft(tmp_path, [no_token]), root)
    empty = dict(good, conversations=[good["conversations"][0], {"from": "gpt", "value": "  "}])
    with pytest.raises(io.DataError, match=r"conversations\[1\]: field 'value' must be a non-empty string"):
        load_examples(_write_sft(tmp_path, [empty]), root)
    missing = dict(good, image="nope.png")
    with pytest.raises(io.DataError, match="file not found"):
        load_examples(_write_sft(tmp_path, [missing]), root)
    with pytest.raises(io.DataError, match="not unique"):
        load_examples(_write_sft(tmp_path, [good, good]), root)
    for change, message in [({"image": "/etc/hostname"}, "field 'image' must be a path inside the image root"),
                            ({"image": "../outside.png"}, "field 'image' must be a path inside the image root"),
                            ({"image": 5}, "field 'image' must be a non-empty path, got 5"),
                            ({"image": "x" * 300 + ".png"}, "field 'image': (file not found|not a readable)"),
                            ({"id": None}, "field 'id' must be a non-empty string or an integer"),
                            ({"conversations": [{"from": "human", "value": "<image>"}, good["conversations"][1]]},
                             "holds no question besides <image>")]:
        with pytest.raises(io.DataError, match=message):
            load_examples(_write_sft(tmp_path, [dict(good, **change)]), root)


def test_an_unreadable_image_names_the_example(smoke_model, tmp_path):
    model, processor, _ = smoke_model
    (tmp_path / "bad.png").write_bytes(b"not a png")
    ex = [Example("ex1", "bad.png", "Describe the image.", "A cup.")]
    with pytest.raises(io.DataError, match="example 'ex1'.*corrupt or unreadable image"):
        bdhs_generate(model, processor, ex, BDHSConfig(), WordOverlap(), ImageLoader(tmp_path), progress=False)


def test_llava_next_anyres_layout(tmp_path):
    """Masking and guidance work on LLaVA-NeXT's AnyRes layout (image tokens vary with the image's size)."""
    from test_model import CORPUS, _real_llava_next

    from mmstudy.models.llava import build_tokenizer

    torch.manual_seed(0)
    model, processor = _real_llava_next(build_tokenizer(CORPUS))
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    processor.tokenizer.padding_side = "left"
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "wide.png")
    Image.new("RGB", (16, 16), (0, 0, 255)).save(tmp_path / "square.png")
    exs = [Example("w", "wide.png", "describe the image .", "there are two objects . a red circle ."),
           Example("s", "square.png", "is there a fork ?", "yes , there is a fork .")]
    cfg = BDHSConfig(rho_th=0.5, iterations=1, max_sentence_tokens=3, max_response_tokens=3)
    results = bdhs_generate(model, processor, exs, cfg, WordOverlap(), ImageLoader(tmp_path), progress=False)
    assert len(results) == 2 and 0.2 < results[0].mask_kept < 0.8


def test_sentence_embedder_offline():
    emb = SentenceEmbedder()
    sims = emb.similarity(["There is a cup on the left.", "There is a cup on the left."],
                          ["There is a cup on the left.", "A dog plays in the park with a frisbee."])
    assert sims[0] == pytest.approx(1.0, abs=1e-5) and sims[1] < 0.5
    with pytest.raises(io.DataError, match="not found"):
        SentenceEmbedder("/nonexistent/model")


def test_bdhs_cli(smoke_model, smoke_world, tmp_path):
    from mmstudy.models.llava import save_llava

    model, processor, _ = smoke_model
    save_llava(model, processor, tmp_path / "m")
    out = tmp_path / "prefs.jsonl"
    args = ["-q", "bdhs", "--model", str(tmp_path / "m"), "--sft", str(smoke_world / "llava_instruct_train.json"),
            "--image-root", str(smoke_world / "images"), "--n", "6", "--iterations", "2", "--out", str(out),
            "--world", str(smoke_world)]
    assert main(args) == 0
    stats = io.read_json(tmp_path / "prefs.stats.json")
    assert (tmp_path / "prefs.stats.png").read_bytes()[:4] == b"\x89PNG"
    assert stats["stats"]["n"] == 6 and len(stats["stats"]["accepted_share_after_iteration"]) == 2
    assert 0 <= stats["stats"]["world"]["hallucinated_share"] <= 1
    assert stats["manifest"]["params"]["config_hash"] == json.loads(out.read_text().splitlines()[0])[
        "provenance"]["config_hash"]
    before = out.read_text()
    assert main(args) == 0 and out.read_text() == before          # rerun: nothing left to do, nothing rewritten


@pytest.mark.parametrize("cfg", [BDHSConfig(rho_th=0.99, iterations=1, seed=2),
                                 BDHSConfig(rho_th=0.0, iterations=1, seed=3),
                                 BDHSConfig(variant="noise", iterations=1, noise_steps=400, seed=4)])
def test_fast_path_equals_generate_per_sentence(smoke_model, examples, loader, cfg):
    """One prefill per example + a shared decode loop gives exactly what `generate` gives sentence by sentence."""
    from mmstudy.data.bdhs import one_iteration

    model, processor, _ = smoke_model
    n = {ex.id: model.config.image_seq_length for ex in examples}
    slow = one_iteration(model, processor, examples, 1, cfg, loader, n, 8, False, fast=False)
    fast = one_iteration(model, processor, examples, 1, cfg, loader, n, 8, False, fast=True)
    assert fast == slow


def test_examples_from_a_converted_sft_file_equal_the_llava_json(smoke_world, tmp_path):
    from mmstudy.converters import ConvertConfig, convert, write_result

    source = smoke_world / "llava_instruct_train.json"
    result = convert("llava_instruct", source, ConvertConfig(image_root=smoke_world / "images"))
    write_result(result, tmp_path / "sft.jsonl")
    direct = load_examples(source, smoke_world / "images", n=12, seed=0)
    converted = load_examples(tmp_path / "sft.jsonl", smoke_world / "images", n=12, seed=0)
    assert converted == direct
