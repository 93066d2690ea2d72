"""Offline preference training: what trains, exact resume, reference caching, lengths, Avg-DPO, CLI; the
world's POVID-like pairs and the preference loader."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from mmstudy import io
from mmstudy.cli import main
from mmstudy.data.preferences import load_preferences
from mmstudy.editions.povid import povid_like_pairs
from mmstudy.judges.oracle import check_answer
from mmstudy.training.dpo import DPOTrainConfig, train_dpo
from mmstudy.world.layout import load_scenes


@pytest.fixture(scope="module")
def pairs(smoke_world):
    return povid_like_pairs(smoke_world, n=16, seed=0)


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def _changed(before, after, prefix):
    names = [n for n in before if prefix in n]
    assert names, prefix
    return {n: not torch.equal(before[n], after[n]) for n in names}


@pytest.mark.parametrize("lora_r", [0, 4])
def test_one_step_changes_every_trainable_parameter_and_no_frozen_one(base_dir, pairs, smoke_world, tmp_path,
                                                                      lora_r):
    cfg = DPOTrainConfig(lora_r=lora_r, lora_alpha=8, epochs=1, batch_size=len(pairs), lr=1e-3, projector_lr=1e-3,
                         warmup_ratio=0.0, checkpoint_every=0, train_projector=True)
    summary = train_dpo(base_dir, pairs, cfg, tmp_path / "run", smoke_world / "images", progress=False)
    assert summary["steps"] == 1
    before, after = _weights(base_dir), _weights(tmp_path / "run" / "model")
    assert set(before) == set(after)
    vision = _changed(before, after, "vision_tower")
    assert not any(vision.values())                                    # frozen by default
    assert all(_changed(before, after, "multi_modal_projector").values())
    lm = _changed(before, after, "language_model")
    if lora_r == 0:   # full fine-tuning of the language model: every tensor of it moves
        assert all(lm.values())                                    # (the tiny model ties lm_head to the embeddings)
    else:             # LoRA merged: exactly the adapted projections move
        adapted = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        for name, moved in lm.items():
            assert moved == name.endswith(tuple(f"{a}.weight" for a in adapted)), name
        assert not any(_changed(before, after, "embed_tokens").values())


def test_interrupted_run_resumes_to_the_same_weights(base_dir, pairs, smoke_world, tmp_path):
    cfg = DPOTrainConfig(lora_r=4, lora_alpha=8, epochs=2, batch_size=4, lr=1e-3, checkpoint_every=3, seed=1)
    full = train_dpo(base_dir, pairs, cfg, tmp_path / "full", smoke_world / "images", progress=False)
    assert full["steps"] == 8
    stopped = train_dpo(base_dir, pairs, cfg, tmp_path / "part", smoke_world / "images", progress=False,
                        stop_after_steps=5)
    assert stopped == {"stopped_at": 5, "total_steps": 8}
    train_dpo(base_dir, pairs, cfg, tmp_path / "part", smoke_world / "images", progress=False)
    a, b = _weights(tmp_path / "full" / "model"), _weights(tmp_path / "part" / "model")
    assert all(torch.equal(a[n], b[n]) for n in a)
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 9))
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected"} <= set(lines[0])
    with pytest.raises(ValueError, match="another training config"):   # its checkpoints belong to cfg
        train_dpo(base_dir, pairs, DPOTrainConfig(lora_r=4, lora_alpha=8, epochs=3, batch_size=4, checkpoint_every=3),
                  tmp_path / "part", smoke_world / "images", progress=False)
    with pytest.raises(ValueError, match="other training data"):      # the same settings on other pairs
        train_dpo(base_dir, pairs[::-1], cfg, tmp_path / "part", smoke_world / "images", progress=False)
    other = tmp_path / "other_model"                                     # the same settings on another model
    shutil.copytree(base_dir, other)
    (other / "config.json").write_text((other / "config.json").read_text().replace("{", '{"note": "edited",', 1))
    with pytest.raises(ValueError, match="with another model than this one"):
        train_dpo(other, pairs, cfg, tmp_path / "part", smoke_world / "images", progress=False)
    images = tmp_path / "other_images"                                   # one image of the pairs replaced
    shutil.copytree(smoke_world / "images", images)
    (images / pairs[0]["image"]).write_bytes((images / pairs[1]["image"]).read_bytes())
    assert pairs[0]["image"] != pairs[1]["image"]
    with pytest.raises(ValueError, match="with other images than this one"):
        train_dpo(base_dir, pairs, cfg, tmp_path / "part", images, progress=False)


def test_precomputed_reference_equals_the_live_one(base_dir, pairs, smoke_world, tmp_path):
    for lora_r in (4, 0):
        runs = {}
        for pre in (False, True):
            cfg = DPOTrainConfig(lora_r=lora_r, lora_alpha=8, epochs=1, batch_size=8, lr=1e-3, precompute_ref=pre)
            out = tmp_path / f"r{lora_r}_{pre}"
            train_dpo(base_dir, pairs, cfg, out, smoke_world / "images", progress=False)
            runs[pre] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        for live, cached in zip(runs[False], runs[True]):
            assert cached["loss"] == pytest.approx(live["loss"], abs=1e-5)
            assert cached["rewards/margins"] == pytest.approx(live["rewards/margins"], abs=1e-5)
        assert runs[True][0]["loss"] == pytest.approx(0.6931, abs=1e-3)     # policy = reference at step 1


def test_lengths_and_avg_dpo(base_dir, pairs, smoke_world, tmp_path):
    images = smoke_world / "images"
    long_pair = dict(pairs[0], id="long", chosen=" ".join(["cup"] * 600))
    with pytest.raises(io.DataError, match="pair 16 \\(id='long'\\).*exceed max_length"):
        train_dpo(base_dir, pairs + [long_pair], DPOTrainConfig(lora_r=4, epochs=1), tmp_path / "a", images,
                  progress=False)
    summary = train_dpo(base_dir, pairs + [long_pair], DPOTrainConfig(lora_r=4, epochs=1, on_too_long="skip"),
                        tmp_path / "b", images, progress=False)
    assert summary["skipped_too_long"] == 1 and summary["pairs"] == len(pairs)
    with pytest.raises(io.DataError, match="needs field 'rejected_2'"):
        train_dpo(base_dir, pairs, DPOTrainConfig(loss="avg_dpo", lora_r=4, epochs=1), tmp_path / "c", images,
                  progress=False)
    doubled = [dict(p, rejected_2=p["rejected"] + " There is a dog.") for p in pairs]
    summary = train_dpo(base_dir, doubled, DPOTrainConfig(loss="avg_dpo", lora_r=4, epochs=1, batch_size=8),
                        tmp_path / "d", images, progress=False)
    assert summary["steps"] == 2


def test_mdpo_scores_the_chosen_response_on_a_corrupted_image_too(base_dir, pairs, smoke_world, tmp_path):
    """mDPO's three terms: at step 1 the policy is the reference, so each term is log 2 (DPO's loss is log 2
    alone); the precomputed reference holds the corrupted views under their own keys and gives the live losses;
    the run moves the weights as DPO does."""
    images = smoke_world / "images"
    runs = {}
    for pre in (False, True):
        cfg = DPOTrainConfig(loss="mdpo", lora_r=4, lora_alpha=8, epochs=1, batch_size=8, lr=1e-3, precompute_ref=pre)
        train_dpo(base_dir, pairs, cfg, tmp_path / str(pre), images, progress=False)
        runs[pre] = io.read_jsonl(tmp_path / str(pre) / "metrics.jsonl")
    assert runs[False][0]["loss"] == pytest.approx(3 * 0.693147, abs=1e-4)
    assert [r["loss"] for r in runs[True]] == pytest.approx([r["loss"] for r in runs[False]], abs=1e-5)
    cache = io.read_json(tmp_path / "True" / "ref_logps.json")["logps"]
    assert {f"{p['id']}#corrupt" for p in pairs} <= set(cache) and len(cache[f"{pairs[0]['id']}#corrupt"]) == 1
    assert cache[f"{pairs[0]['id']}#corrupt"][0] != cache[str(pairs[0]["id"])][0]     # another image, another score
    q = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(_weights(base_dir)[q], _weights(tmp_path / "False" / "model")[q])


def test_the_corrupted_view_is_seeded_by_pair_and_keeps_the_chosen_rows():
    from mmstudy.training.dpo import corrupted_view

    batch = {"pixel_values": torch.zeros(2, 3, 4, 4), "response_ids": torch.arange(12).reshape(4, 3),
             "response_mask": torch.ones(4, 3), "n_responses": 2, "prompt_ids": torch.ones(2, 5)}
    view = corrupted_view(batch, ["a", "b"], steps=500, seed=0)
    assert view["n_responses"] == 1 and torch.equal(view["response_ids"], batch["response_ids"][:2])
    assert torch.equal(view["prompt_ids"], batch["prompt_ids"]) and not torch.equal(view["pixel_values"][0],
                                                                                     view["pixel_values"][1])
    again = corrupted_view(batch, ["b", "a"], steps=500, seed=0)["pixel_values"]
    assert torch.equal(again[0], view["pixel_values"][1]) and torch.equal(again[1], view["pixel_values"][0])
    assert not torch.equal(corrupted_view(batch, ["a", "b"], steps=500, seed=1)["pixel_values"], view["pixel_values"])


def test_mdpo_settings_enter_the_run_identity_of_mdpo_runs_only():
    assert not any(k.startswith("mdpo_") for k in DPOTrainConfig().identity())
    assert DPOTrainConfig(loss="mdpo").identity()["mdpo_noise_steps"] == 500
    assert DPOTrainConfig(loss="mdpo", mdpo_anchor=1.0).identity() != DPOTrainConfig(loss="mdpo").identity()


def test_config_validation():
    for bad in ({"loss": "kto"}, {"on_too_long": "truncate"}, {"lora_r": 8, "train_lm": False},
                {"train_lm": False, "train_projector": False, "lora_r": 0}, {"beta": 0}, {"mdpo_noise_steps": 0}):
        with pytest.raises(ValueError):
            DPOTrainConfig(**bad)


def test_train_dpo_cli(base_dir, smoke_world, tmp_path):
    prefs = tmp_path / "prefs.jsonl"
    assert main(["-q", "world-prefs", "--world", str(smoke_world), "--n", "8", "--out", str(prefs)]) == 0
    out = tmp_path / "run"
    assert main(["-q", "train-dpo", "--model", str(base_dir), "--prefs", str(prefs), "--image-root",
                 str(smoke_world / "images"), "--out", str(out), "--loss", "ipo", "--beta", "0.9", "--lora-r", "4",
                 "--lora-alpha", "8", "--epochs", "1", "--batch-size", "4"]) == 0
    assert (out / "model" / "config.json").is_file() and (out / "manifest.json").is_file()
    assert io.read_json(out / "train_summary.json")["config"]["loss"] == "ipo"
    adapter = tmp_path / "adapter"
    for _ in range(2):                  # the same command again: the finished run's adapter is replaced whole
        assert main(["-q", "train-dpo", "--model", str(base_dir), "--prefs", str(prefs), "--image-root",
                     str(smoke_world / "images"), "--out", str(adapter), "--lora-r", "4", "--epochs", "1",
                     "--adapter-only"]) == 0
        assert (adapter / "model" / "adapter_config.json").is_file()
        assert sorted(p.name for p in adapter.iterdir() if p.name.startswith(".")) == []   # no temp folder left


def test_povid_like_pairs_are_false_for_the_scene(smoke_world):
    pairs = povid_like_pairs(smoke_world, n=60, seed=3)
    scenes = {f"{s.image_id}.png": s for s in load_scenes(smoke_world, "train")}
    true_chosen = 0
    for p in pairs:
        scene = scenes[p["image"]]
        made = set(check_answer(p["chosen"], scene).hallucinations)   # the SFT writer's prior-driven errors, if any
        true_chosen += not made
        assert made < set(check_answer(p["rejected"], scene).hallucinations) or \
            check_answer(p["rejected"], scene, p["chosen"]).hallucinated, p
        assert p["rejected"] != p["chosen"] and p["provenance"]["edits"]
    assert true_chosen >= 0.7 * len(pairs)
    assert pairs == povid_like_pairs(smoke_world, n=60, seed=3)
    kinds = {e for p in pairs for e in p["provenance"]["edits"]}
    assert {"yes/no", "add"} <= kinds


def test_preference_loader_errors(tmp_path, smoke_world):
    good = {"id": "a", "image": next((smoke_world / "images").glob("*.png")).name, "prompt": "q", "chosen": "c",
            "rejected": "r", "source": "test"}
    path = tmp_path / "p.jsonl"
    io.write_jsonl(path, [good, dict(good, id="b", rejected="")])
    with pytest.raises(io.DataError, match="p.jsonl, record 2: field 'rejected' must be a non-empty string"):
        load_preferences(path)
    io.write_jsonl(path, [good, good])
    with pytest.raises(io.DataError, match="duplicate id 'a'"):
        load_preferences(path)
    io.write_jsonl(path, [dict(good, image="missing.png")])
    with pytest.raises(io.DataError, match="file not found"):
        load_preferences(path, image_root=smoke_world / "images")


def _mixed_lengths(pairs: list[dict], n: int) -> list[dict]:
    """`n` pairs whose chosen responses are 1 to 3 times as long: rows that `length_groups` splits."""
    return [dict(p, chosen=" ".join([p["chosen"]] * (1 + i % 3))) for i, p in enumerate(pairs[:n])]


def test_length_groups_pad_the_fewest_tokens():
    from mmstudy.training.dpo import length_groups

    lengths = [5, 50, 6, 48, 20]
    assert length_groups(lengths, 1) == [[0, 2, 4, 3, 1]]        # 5 x 50 = 250 padded tokens
    assert length_groups(lengths, 2) == [[0, 2, 4], [3, 1]]      # 3 x 20 + 2 x 50 = 160 (not 2 x 6 + 3 x 50 = 162)
    assert length_groups(lengths, 3) == [[0, 2], [4], [3, 1]]    # 12 + 20 + 100 = 132
    assert length_groups([7, 7, 7], 3) == [[0, 1, 2]]             # no tokens to save: one group
    assert length_groups([3], 4) == [[0]]
    with pytest.raises(ValueError, match="max_groups"):
        length_groups([1], 0)


def test_shared_prompt_log_probs_equal_a_plain_forward(smoke_model, pairs, smoke_world):
    """The prompt runs once and both responses continue from its cache, in length groups: same log-probs as two
    full forwards."""
    from mmstudy.models.generation import chat_prompt
    from mmstudy.training.dpo import PairScorer, collate, encode_pairs, length_groups

    model, processor, _ = smoke_model
    mixed = _mixed_lengths(pairs, 4)
    encoded, _ = encode_pairs(processor, mixed, smoke_world / "images", 10**6, "error", False)
    batch = collate(encoded, processor.tokenizer.pad_token_id)
    assert len(length_groups(batch["response_mask"].sum(-1).tolist())) > 1
    with torch.no_grad():
        shared = PairScorer(model)(**batch).tolist()
        plain = []
        for k in range(2):
            for pair, enc in zip(mixed, encoded):
                image = io.load_image(smoke_world / "images" / pair["image"])
                inputs = processor(images=[image], text=[chat_prompt(processor, pair["prompt"])], return_tensors="pt")
                ids = torch.cat([inputs["input_ids"], torch.tensor([enc.responses[k]])], dim=1)
                logp = torch.log_softmax(model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[0, :-1], -1)
                token = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)
                plain.append(token[-len(enc.responses[k]):].sum().item())
    assert shared == pytest.approx(plain, abs=1e-4)


def test_length_groups_give_the_gradients_of_one_padded_forward(smoke_model, pairs, smoke_world):
    from mmstudy.training.dpo import collate, encode_pairs, shared_prefix_hidden

    model, processor, _ = smoke_model
    encoded, _ = encode_pairs(processor, _mixed_lengths(pairs, 4), smoke_world / "images", 10**6, "error", False)
    batch = collate(encoded, processor.tokenizer.pad_token_id)
    weights = torch.randn(*batch["response_ids"].shape, model.config.text_config.hidden_size,
                          generator=torch.Generator().manual_seed(0))
    params = [p for p in model.parameters() if p.requires_grad]
    found = []
    for groups in (1, 4):
        last, hidden = shared_prefix_hidden(model, groups=groups, **batch)
        grads = torch.autograd.grad((hidden * weights).sum() + last.sum(), params, allow_unused=True)
        found.append((hidden.detach(), [g for g in grads if g is not None]))
    (one, g_one), (grouped, g_grouped) = found
    assert torch.equal(one == 0, grouped == 0) and (one != 0).any()    # 0 exactly at padding, in both
    torch.testing.assert_close(grouped, one, atol=1e-5, rtol=1e-5)
    assert len(g_one) == len(g_grouped) > 10
    largest = max(float(g.norm()) for g in g_one)
    for a, b in zip(g_grouped, g_one):     # float sums in another order: equal to 1e-5 of each gradient's norm,
        # give or take 1e-8 of the largest (a few gradients are float noise themselves: norms near 1e-7, largest 150)
        assert float((a - b).norm()) <= 1e-5 * float(b.norm()) + 1e-8 * largest
    with pytest.raises(ValueError, match="8 response rows for 4 prompts and n_responses=3: expected 12"):
        shared_prefix_hidden(model, **{**batch, "n_responses": 3})


def test_povid_like_pairs_on_fresh_scenes(smoke_world, tmp_path):
    import shutil

    world = tmp_path / "world"          # a copy: fresh scenes add images to the world they are given
    shutil.copytree(smoke_world, world)
    pairs = povid_like_pairs(world, n=10, seed=5, fresh=20)
    assert len(pairs) == 10 and all(p["image"].startswith("pref5_") for p in pairs)
    assert all((world / "images" / p["image"]).is_file() for p in pairs)
    assert pairs == povid_like_pairs(world, n=10, seed=5, fresh=20)
    # another seed draws other scenes into other files: it never reads the images of seed 5's scenes
    other = povid_like_pairs(world, n=10, seed=6, fresh=20)
    assert all(p["image"].startswith("pref6_") for p in other)
    assert io.load_image(world / "images" / "pref5_000000.png").tobytes() != \
        io.load_image(world / "images" / "pref6_000000.png").tobytes()
    with pytest.raises(ValueError, match="partner_share"):
        povid_like_pairs(world, partner_share=1.5)


def _existence_pair(scene, name, present: bool) -> dict:
    yes, no = f"Yes, there is a {name} in the image.", f"No, there is no {name} in the image."
    chosen, rejected = (yes, no) if present else (no, yes)
    return {"id": f"{scene.image_id}_{name}", "image": f"{scene.image_id}.png", "prompt": f"Is there a {name}?",
            "chosen": chosen, "rejected": rejected, "source": "world_povid", "provenance": {"edits": ["partner"]}}


def test_keep_model_errors_keeps_wrong_answers_and_balances_yes_no(smoke_world):
    from mmstudy.editions.povid import keep_model_errors
    from mmstudy.world.scene import CLASSES

    scenes = load_scenes(smoke_world, "val")[:6]
    pairs, answers, absents = [], [], []
    for k, scene in enumerate(scenes):
        present = scene.classes()[0]
        absent = next(c.name for c in CLASSES if c.name not in scene.classes() and " " not in c.name)
        absents.append(absent)
        pairs += [_existence_pair(scene, present, True), _existence_pair(scene, absent, False)]
        # the model denies every present object; it affirms the absent one in the first four scenes only
        answers += [f"No, there is no {present} in the image.",
                    f"Yes, there is a {absent} in the image." if k < 4 else f"No, there is no {absent} in the image."]
    description = {"id": "d", "image": pairs[0]["image"], "prompt": "Describe the image.", "chosen": "x",
                   "rejected": "y", "source": "world_povid", "provenance": {"edits": ["add"]}}
    pairs.append(description)
    answers.append(f"There is a {absents[0]} in the middle.")
    by_image = {f"{s.image_id}.png": s for s in scenes}
    kept = keep_model_errors(pairs, answers, by_image, seed=0)
    yes = [p for p in kept if p["chosen"].startswith("Yes")]
    no = [p for p in kept if p["chosen"].startswith("No")]
    assert len(yes) == len(no) == 4          # 6 wrong denials subsampled to the 4 wrong affirmations
    assert {p["id"] for p in no} == {pairs[2 * k + 1]["id"] for k in range(4)}
    assert kept[-1]["id"] == "d" and kept[-1]["provenance"]["model_answer"].startswith("There is a")
    assert all(p["provenance"]["model_answer"] for p in kept)
    assert kept == keep_model_errors(pairs, answers, by_image, seed=0)
    assert [p["id"] for p in keep_model_errors(pairs, answers, by_image, seed=1)] != [p["id"] for p in kept]


def test_answer_prompts_uses_the_evaluation_settings(smoke_world, smoke_model):
    from mmstudy.editions.povid import answer_prompts, is_existence

    model, processor, _ = smoke_model
    pairs = povid_like_pairs(smoke_world, n=12, seed=3, partner_share=0.5)
    answers = answer_prompts(model, processor, pairs, smoke_world / "images", progress=False)
    assert len(answers) == len(pairs) and all(isinstance(a, str) for a in answers)
    for p, a in zip(pairs, answers):
        if is_existence(p):        # POPE's budget: the answer ends at its first period
            assert "." not in a[:-1]
    assert any(is_existence(p) for p in pairs) and any(not is_existence(p) for p in pairs)


def test_mining_keeps_the_pairs_the_model_gets_wrong(smoke_world, smoke_model, tmp_path, monkeypatch):
    """povid_like_pairs(mine_with=...) keeps exactly the pairs whose prompt the model answers with a false claim.
    The smoke model's answers are degenerate (no claims), so the model's answers are scripted: the rejected
    response for every other pair, the chosen one for the rest."""
    import shutil

    from mmstudy.editions import povid as world_prefs

    world = tmp_path / "world"
    shutil.copytree(smoke_world, world)
    everything = povid_like_pairs(world, seed=3, fresh=30, partner_share=0.5)
    scripted = {p["id"]: p["rejected"] if i % 2 else p["chosen"] for i, p in enumerate(everything)}
    monkeypatch.setattr(world_prefs, "answer_prompts",
                        lambda model, processor, pairs, root, progress: [scripted[p["id"]] for p in pairs])
    mined = povid_like_pairs(world, seed=3, fresh=30, partner_share=0.5, mine_with=smoke_model[:2])
    wrong = [p for i, p in enumerate(everything) if i % 2]
    assert mined and {p["id"] for p in mined} <= {p["id"] for p in wrong}
    assert all(p["provenance"]["model_answer"] == p["rejected"] for p in mined)
    existence = [p for p in mined if world_prefs.is_existence(p)]
    assert sum(p["chosen"].startswith("Yes") for p in existence) * 2 == len(existence)
    others = {p["id"] for p in wrong if not world_prefs.is_existence(p)}
    assert others <= {p["id"] for p in mined}              # wrong non-existence answers are all kept


