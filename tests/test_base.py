"""Staged base training: tokenisation matches the chat template, each stage trains only what it should,
image-attention dropout hides image tokens, runs are deterministic and resumable.

Run: pytest tests/test_base.py
"""

import dataclasses

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmstudy.data.llava import conversation_turns, load_llava_instruct
from mmstudy.training import base
from mmstudy.training.base import BaseTrainConfig, StageConfig, normalise, tokenize_turns, train_base
from mmstudy.world.layout import load_scenes


@pytest.fixture()
def fresh(smoke_world):
    cfg = BaseTrainConfig.for_profile("smoke")
    model, processor = base.build_world_model(smoke_world, cfg)
    return model, processor, cfg


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def test_tokenize_turns_matches_the_processor_rendering(fresh):
    model, processor, _ = fresh
    turns = [("Is there a fork in the image?", "Yes, there is a fork in the image."),
             ("How many forks are there in the image?", "There are two forks in the image.")]
    ids, labels = tokenize_turns(processor.tokenizer, turns, model.config.image_seq_length)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": turns[0][0]}]},
        {"role": "assistant", "content": [{"type": "text", "text": turns[0][1]}]},
        {"role": "user", "content": [{"type": "text", "text": turns[1][0]}]},
        {"role": "assistant", "content": [{"type": "text", "text": turns[1][1]}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    image = np.zeros((48, 48, 3), dtype=np.uint8)
    expected = processor(images=[image], text=[text], return_tensors="pt")["input_ids"][0].tolist()
    assert ids == expected
    answer_ids = [i for i, lab in zip(ids, labels) if lab != base.IGNORE_INDEX]
    assert processor.tokenizer.decode(answer_ids, skip_special_tokens=False) == \
        "yes, there is a fork in the image. </s> there are two forks in the image. </s>"


def test_normalise_equals_the_image_processor(fresh, smoke_world):
    _, processor, _ = fresh
    images = base.load_images_uint8(smoke_world, ["train_000000.png", "train_000001.png"], progress=False)
    from mmstudy.io import load_image

    pils = [load_image(smoke_world / "images" / n) for n in ("train_000000.png", "train_000001.png")]
    expected = processor.image_processor(pils, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(normalise(images), expected, atol=1e-6, rtol=0)


def test_token_cell_labels_follow_the_grid(smoke_world):
    scene = load_scenes(smoke_world, "train")[0]
    cls, size = base._token_cell_labels([scene], grid=6)
    assert cls.shape == (1, 36)
    for o in scene.objects:
        r, c = divmod(o.cell, 3)
        tokens = [(2 * r + dr) * 6 + 2 * c + dc for dr in (0, 1) for dc in (0, 1)]
        assert all(cls[0, t].item() > 0 for t in tokens)
        assert all(size[0, t].item() == (1 if o.size == "small" else 2) for t in tokens)


@pytest.mark.parametrize("stage", ["language", "vision", "projector", "instruct"])
def test_each_stage_trains_only_its_modules(fresh, smoke_world, stage):
    model, processor, cfg = fresh
    cfg = dataclasses.replace(cfg, **{stage: StageConfig(2, 4, 1e-3)})
    scenes = load_scenes(smoke_world, "train")
    names = [f"{s.image_id}.png" for s in scenes]
    images = base.load_images_uint8(smoke_world, names, progress=False)
    parts = {"vision": model.model.vision_tower, "projector": model.model.multi_modal_projector,
             "lm": model.model.language_model}
    before = {k: _snapshot(m) for k, m in parts.items()}
    run = {
        "language": lambda: base.stage_language(model, processor.tokenizer, smoke_world, cfg, False),
        "vision": lambda: base.stage_vision(model, images, scenes, cfg, False),
        "projector": lambda: base.stage_projector(model, processor.tokenizer, images, scenes, cfg, False),
        "instruct": lambda: base.stage_instruct(model, processor.tokenizer, smoke_world, images,
                                                {n: i for i, n in enumerate(names)}, cfg, False),
    }[stage]
    report = run()
    assert report["steps"] == 2 and np.isfinite(report["final_loss"])
    trained = {"language": {"lm"}, "vision": {"vision"}, "projector": {"projector"}, "instruct": {"lm"}}[stage]
    for name, module in parts.items():
        changed = _changed(before[name], module)
        if name in trained:
            assert changed, f"stage {stage} left {name} untouched"
        else:
            assert not changed, f"stage {stage} changed frozen {name}: {sorted(changed)[:3]}"


def _instruct_batch(model, processor, world, cfg, monkeypatch) -> dict:
    """The keyword arguments of the model's forward in a stage 4 of one step under `cfg`."""
    names = [f"{s.image_id}.png" for s in load_scenes(world, "train")]
    images = base.load_images_uint8(world, names, progress=False)
    seen = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **kw: seen.append(kw) or forward(*a, **kw))
    base.stage_instruct(model, processor.tokenizer, world, images, {n: i for i, n in enumerate(names)},
                        dataclasses.replace(cfg, instruct=dataclasses.replace(cfg.instruct, steps=1)), False)
    return seen[-1]


def test_image_attention_dropout_hides_image_tokens(fresh, smoke_world, monkeypatch):
    model, processor, cfg = fresh
    cfg = dataclasses.replace(cfg, instruct=StageConfig(1, 8, 1e-3), p_blind=1.0, blind_keep_max=0.0)
    seen = _instruct_batch(model, processor, smoke_world, cfg, monkeypatch)
    is_image = seen["input_ids"] == model.config.image_token_id
    sees = seen["attention_mask"][:, 0].any(dim=1)   # (R, W): some position attends to this key
    assert is_image.any() and not sees[is_image].any()
    assert sees[~is_image & (seen["input_ids"] != 0)].all()


def test_image_sequences_group_records_by_image_in_first_appearance_order():
    records = [{"image": "b.png"}, {"image": "a.png"}, {"image": "b.png"}, {"image": "c.png"}, {"image": "a.png"}]
    assert base.image_sequences(records) == [[0, 2], [1, 4], [3]]


def test_per_image_reads_each_image_once_with_all_its_conversations(fresh, smoke_world, monkeypatch):
    model, processor, cfg = fresh
    records = load_llava_instruct(smoke_world / "llava_instruct_train.json")
    assert min(map(len, base.image_sequences(records))) >= 2   # the smoke world has several records per image
    cfg = dataclasses.replace(cfg, instruct=StageConfig(1, 4, 1e-3), p_blind=0.0, per_image=True)
    batch = _instruct_batch(model, processor, smoke_world, cfg, monkeypatch)
    n_img, image_id = model.config.image_seq_length, model.config.image_token_id
    assert len(batch["mm_encoder_outputs"]["image"].pooler_output) == 4   # 4 images a step
    assert (batch["input_ids"] == image_id).sum() == 4 * n_img             # each image's tokens once
    conversations = {tuple(tokenize_turns(processor.tokenizer, conversation_turns(r), n_img)[0]) for r in records}
    mask, pos, ends = batch["attention_mask"][:, 0], batch["position_ids"], 0
    for r in range(len(mask)):   # a conversation's last token (its positions stop running on) sees it all, alone
        for q in (batch["labels"][r] == processor.tokenizer.eos_token_id).nonzero().flatten().tolist():
            if q + 1 == pos.shape[1] or pos[r, q + 1] != pos[r, q] + 1:
                assert tuple(batch["input_ids"][r][mask[r, q]].tolist()) in conversations
                ends += 1
    assert ends >= 8   # at least two conversations of each image


def _loss_and_grads(model, batch, features):
    model.zero_grad()
    loss = model(**batch, mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=list(features))}).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_loss_and_grads(got, want):
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    assert got[1].keys() == want[1].keys()
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_shared_image_units_give_the_loss_and_gradients_of_separate_conversations(fresh, smoke_world):
    model, processor, _ = fresh
    tok, n_img = processor.tokenizer, model.config.image_seq_length
    records = load_llava_instruct(smoke_world / "llava_instruct_train.json")
    groups = base.image_sequences(records)[:3]
    encoded = [[tokenize_turns(tok, conversation_turns(records[i]), n_img) for i in g] for g in groups]
    images = base.load_images_uint8(smoke_world, [records[g[0]]["image"] for g in groups], progress=False)
    features = base._image_tokens(model, images, progress=False)
    model.train()
    separate = [e for conversations in encoded for e in conversations]
    of_image = [k for k, conversations in enumerate(encoded) for _ in conversations]
    want = _loss_and_grads(model, base.pad_batch(*zip(*separate), tok.pad_token_id), features[of_image])
    units = [base.shared_image_unit(e, 2 + n_img) for e in encoded]
    packed, _, order = base.pack_units(units, tok.pad_token_id)
    assert (packed["input_ids"] == model.config.image_token_id).sum() == len(groups) * n_img
    _assert_same_loss_and_grads(_loss_and_grads(model, packed, features[order]), want)


def test_shared_image_unit_refuses_conversations_that_open_differently():
    with pytest.raises(ValueError, match="same 3 unlabelled tokens"):
        base.shared_image_unit([([1, 2, 9, 4], [-100] * 3 + [4]), ([1, 2, 7, 5], [-100] * 3 + [5])], 3)


def test_training_is_deterministic_and_resumable(smoke_world, tmp_path):
    cfg = BaseTrainConfig.for_profile("smoke")
    m1, _, r1 = train_base(smoke_world, cfg, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "stage0_language.pt", "stage1_vision.pt", "stage2_projector.pt", "stage3_instruct.pt"]
    m2, _, _ = train_base(smoke_world, cfg, progress=False)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    (tmp_path / "ckpt" / "stage3_instruct.pt").unlink()
    m3, _, r3 = train_base(smoke_world, cfg, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert [r.get("resumed", False) for r in r3["stages"]] == [True, True, True, False]
    for (k, a), (_, b) in zip(m1.state_dict().items(), m3.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="stage0_language.pt was written for another base-training config"):
        train_base(smoke_world, dataclasses.replace(cfg, seed=cfg.seed + 1), checkpoint_dir=tmp_path / "ckpt",
                   progress=False)


def test_config_validation():
    with pytest.raises(ValueError, match="pack_width"):
        BaseTrainConfig(pack_width=-1)
    with pytest.raises(ValueError, match="steps >= 0"):
        StageConfig(-1, 4, 1e-3)
    with pytest.raises(ValueError, match="probabilities"):
        BaseTrainConfig(p_blind=1.5)
    with pytest.raises(ValueError, match="unknown base-training profile"):
        BaseTrainConfig.for_profile("xl")


def test_pack_rows_places_every_sequence_once_within_the_longest():
    lengths = [5, 3, 4, 2, 1, 5, 2]
    rows = base.pack_rows(lengths)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 5 for row in rows)
    assert len(rows) == 5   # 22 tokens: the best any packing into rows of 5 can do


def _encoded_batch(model, processor, smoke_world, n=6):
    records = load_llava_instruct(smoke_world / "llava_instruct_train.json")[:60]
    encoded = [tokenize_turns(processor.tokenizer, conversation_turns(r), model.config.image_seq_length)
               for r in records]
    by_length = sorted(range(len(records)), key=lambda i: len(encoded[i][0]))
    pick = by_length[:n // 2] + by_length[-(n - n // 2):]   # short and long: some rows hold two sequences
    records, encoded = [records[i] for i in pick], [encoded[i] for i in pick]
    images = base.load_images_uint8(smoke_world, [r["image"] for r in records], progress=False)
    return encoded, images


def test_a_packed_batch_gives_the_loss_and_gradients_of_the_padded_batch(fresh, smoke_world):
    model, processor, _ = fresh
    encoded, images = _encoded_batch(model, processor, smoke_world)
    seqs, labels = [e[0] for e in encoded], [e[1] for e in encoded]
    features = base._image_tokens(model, images, progress=False)
    model.train()
    drop_of = {1: 5, 4: 0}   # sequence -> an image token whose key is hidden (image-attention dropout)

    padded = base.pad_batch(seqs, labels, processor.tokenizer.pad_token_id)
    first = [s.index(model.config.image_token_id) for s in seqs]
    for i, k in drop_of.items():
        padded["attention_mask"][i, first[i] + k] = 0
    want = _loss_and_grads(model, padded, features)
    packed, sequence, order = base.pack_batch(seqs, labels, processor.tokenizer.pad_token_id)
    assert packed["input_ids"].shape[0] < len(seqs) and (sequence >= 0).sum() == sum(map(len, seqs))
    for i, k in drop_of.items():
        r, c = torch.nonzero((sequence == i) & (packed["input_ids"] == model.config.image_token_id))[k]
        packed["attention_mask"][r, 0, :, c] = False
    _assert_same_loss_and_grads(_loss_and_grads(model, packed, features[order]), want)


def test_pack_batch_refuses_a_first_label_that_would_be_learned_across_sequences():
    with pytest.raises(ValueError, match="first label"):
        base.pack_batch([[1, 2, 3], [1, 4]], [[-100, 2, 3], [1, 4]], pad_id=0)


def test_instruct_image_tokens_computed_once_give_the_loss_of_the_pixel_path(fresh, smoke_world):
    model, processor, _ = fresh
    names = [f"{s.image_id}.png" for s in load_scenes(smoke_world, "train")]
    images = base.load_images_uint8(smoke_world, names, progress=False)
    records = load_llava_instruct(smoke_world / "llava_instruct_train.json")[:4]
    encoded = [tokenize_turns(processor.tokenizer, conversation_turns(r), model.config.image_seq_length)
               for r in records]
    batch = base.pad_batch([e[0] for e in encoded], [e[1] for e in encoded], processor.tokenizer.pad_token_id)
    idx = torch.tensor([names.index(r["image"]) for r in records])
    model.train()
    features = base._image_tokens(model, images, progress=False, batch_size=7)
    assert features.shape == (len(names), model.config.image_seq_length, model.config.text_config.hidden_size)
    from_pixels = model(pixel_values=normalise(images[idx]), **batch).loss
    image = BaseModelOutputWithPooling(pooler_output=list(features[idx]))
    assert torch.allclose(model(**batch, mm_encoder_outputs={"image": image}).loss, from_pixels, atol=1e-6)
    assert model.training
