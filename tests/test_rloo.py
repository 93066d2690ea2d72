"""RLOO: the leave-one-out estimator, normalization and KL as pure functions, Gumbel-max sampling (distribution,
low temperature = greedy, a sample independent of its batch), policy log-probs against a plain forward, what one
step trains, exact resume with identical samples, prompt files, and the train-rloo command end to end.

Run: python -m pytest -q tests/test_rloo.py
"""

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmstudy import io
from mmstudy.cli import main
from mmstudy.editions.povid import povid_like_pairs
from mmstudy.models.generation import chat_prompt, generate
from mmstudy.training.dpo import PairScorer
from mmstudy.training.reward import RewardModel, save_reward_model
from mmstudy.training.rloo import (
    GumbelSampler,
    RLOOConfig,
    cut_at_eos,
    distinct_trigram_ratio,
    leave_one_out_advantages,
    load_prompts,
    normalize_rewards,
    policy_examples,
    response_stats,
    rloo_loss,
    sample_responses,
    sequence_kl,
    step_records,
    train_rloo,
)

ADAPTED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def rm_dir(smoke_model, tmp_path_factory):
    """An untrained RM (random head) on the smoke model: its scores vary with the response, which is all the
    mechanics need."""
    model, processor, _ = smoke_model
    return save_reward_model(RewardModel(copy.deepcopy(model), seed=5), processor,
                             tmp_path_factory.mktemp("rloo") / "rm")


@pytest.fixture(scope="module")
def prompts(smoke_world):
    return povid_like_pairs(smoke_world, n=6, seed=4)


def _images(records, smoke_world):
    return [io.load_image(smoke_world / "images" / r["image"]) for r in records]


def test_leave_one_out_advantages_hand_computed():
    returns = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    # baselines: (2+3+6)/3, (1+3+6)/3, (1+2+6)/3, (1+2+3)/3
    expected = [[1 - 11 / 3, 2 - 10 / 3, 3 - 3.0, 6 - 2.0], [0.0] * 4]
    advantages = leave_one_out_advantages(returns)
    assert advantages.tolist() == [pytest.approx(row) for row in expected]
    assert torch.allclose(advantages, 4 / 3 * (returns - returns.mean(-1, keepdim=True)))
    assert leave_one_out_advantages(torch.tensor([[2.0, 0.0]])).tolist() == [[2.0, -2.0]]
    with pytest.raises(ValueError, match="k >= 2"):
        leave_one_out_advantages(torch.ones(3, 1))


def test_kl_loss_and_normalization():
    logps = torch.tensor([[-3.0, -5.0]], requires_grad=True)
    assert sequence_kl(logps.detach(), logps.detach()).tolist() == [[0.0, 0.0]]
    assert sequence_kl(torch.tensor([-1.0]), torch.tensor([-3.0])).tolist() == [2.0]
    loss = rloo_loss(logps, torch.tensor([[1.0, -1.0]]))
    assert loss.item() == pytest.approx(-(-3.0 + 5.0) / 2)
    loss.backward()
    assert logps.grad.tolist() == [[-0.5, 0.5]]       # more of the sample above its baseline, less of the other
    raw = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    assert normalize_rewards(raw, "none") is raw
    assert normalize_rewards(raw, "dataset", {"mean": 1.0, "std": 2.0}).tolist() == [[0.0, 1.0], [2.0, 3.0]]
    batch = normalize_rewards(raw, "batch")
    assert batch.mean().item() == pytest.approx(0.0) and batch.std().item() == pytest.approx(1.0)
    assert normalize_rewards(torch.full((2, 2), 4.0), "batch").tolist() == [[0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError):
        normalize_rewards(raw, "dataset")


def test_collapse_indicators():
    assert distinct_trigram_ratio("a cup a cup a cup") == pytest.approx(2 / 4)
    assert distinct_trigram_ratio("yes there is") == 1.0 and distinct_trigram_ratio("yes") is None
    stats = response_stats([["a b c", "a b c"], ["", "x y z w"]], [4, 4, 1, 5], [False, False, False, True])
    assert stats == {"response/length": 3.5, "response/empty_share": 0.25, "response/truncated_share": 0.25,
                     "response/distinct_per_prompt": 0.75, "response/distinct_3grams": 1.0}
    assert cut_at_eos([5, 9, 2, 0, 0], {2}) == ([5, 9, 2], False) and cut_at_eos([5, 9], {2}) == ([5, 9], True)


def test_config_validation():
    for bad in ({"k": 1}, {"lora_r": 0}, {"normalize": "z"}, {"temperature": 0}, {"beta": -0.1}, {"steps": 0},
                {"micro_batch": -1}):
        with pytest.raises(ValueError):
            RLOOConfig(**bad)


def test_gumbel_max_samples_the_softmax():
    """argmax(scores / T + Gumbel) over 4,000 seeded rows has the frequencies of softmax(scores / T)."""
    scores = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf")])
    for temperature in (1.0, 2.0):
        sampler = GumbelSampler(range(4000), temperature)
        picks = sampler(None, scores.expand(4000, -1)).argmax(-1)
        freq = torch.bincount(picks, minlength=5).float() / 4000
        expected = torch.softmax(scores / temperature, -1)
        assert freq[4] == 0
        assert torch.all((freq - expected).abs() < 4 * (expected * (1 - expected) / 4000).sqrt() + 1e-9), freq
    again = GumbelSampler([7, 8], 1.0)(None, scores.expand(2, -1))
    assert torch.equal(again, GumbelSampler([7, 8], 1.0)(None, scores.expand(2, -1)))


def test_sampling_is_greedy_at_low_temperature_and_independent_of_the_batch(smoke_model, smoke_world, prompts):
    model, processor, _ = smoke_model
    images, questions = _images(prompts[:3], smoke_world), [p["prompt"] for p in prompts[:3]]
    cold, _ = sample_responses(model, processor, images, questions, [[1], [2], [3]], 1e-4, 12)
    greedy = generate(model, processor, images, [chat_prompt(processor, q) for q in questions], max_new_tokens=12,
                      progress=False)
    assert [processor.tokenizer.decode(t[0], skip_special_tokens=True).strip() for t in cold] == greedy
    seeds = [[11, 12, 13], [21, 22, 23], [31, 32, 33]]
    together, truncated = sample_responses(model, processor, images, questions, seeds, 1.0, 12, batch_size=9)
    alone, _ = sample_responses(model, processor, images[1:2], questions[1:2], [[22]], 1.0, 12, batch_size=1)
    assert alone[0][0] == together[1][1]
    assert together == sample_responses(model, processor, images, questions, seeds, 1.0, 12, batch_size=2)[0]
    flat = [t for row in together for t in row]
    assert len({tuple(t) for t in flat}) > 1, "different seeds, different samples"
    eos = processor.tokenizer.eos_token_id
    assert all((t[-1] == eos) != cut for row, cuts in zip(together, truncated) for t, cut in zip(row, cuts))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_policy_log_probs_equal_a_plain_forward(smoke_model, smoke_world, prompts, temperature):
    model, processor, _ = smoke_model
    images, questions = _images(prompts[:2], smoke_world), [p["prompt"] for p in prompts[:2]]
    tok = processor.tokenizer
    texts = [["yes, there is a cup.", "no"], ["there are two dogs in the image.", "a"]]
    tokens = [[tok(" " + t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in row] for row in texts]
    tokens[1][1] = tokens[1][1][:1]                    # a row without EOS, as a truncated sample
    examples = policy_examples(processor, images, questions, ["a", "b"], tokens)
    from mmstudy.training.dpo import collate

    with torch.no_grad():
        got = PairScorer(model, temperature)(**collate(examples, processor.tokenizer.pad_token_id)).tolist()
        plain = []
        for s in range(2):
            for b in range(2):
                text = [chat_prompt(processor, questions[b])]
                inputs = processor(images=[images[b]], text=text, return_tensors="pt")
                ids = torch.cat([inputs["input_ids"], torch.tensor([tokens[b][s]])], dim=1)
                logits = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[0, :-1] / temperature
                token = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
                plain.append(token[-len(tokens[b][s]):].sum().item())
    assert got == pytest.approx(plain, abs=1e-4)


def test_step_prompts_and_prompt_files(prompts, smoke_world, tmp_path):
    cfg = RLOOConfig(batch_size=4)
    first, second = step_records(prompts, cfg, 0), step_records(prompts, cfg, 1)
    assert len(first) == 4 and len(second) == 2
    assert sorted(p["id"] for p in first + second) == sorted(p["id"] for p in prompts)
    assert step_records(prompts, cfg, 2) != first or step_records(prompts, cfg, 3) != second  # a new epoch order
    path = tmp_path / "prefs.jsonl"
    io.write_jsonl(path, prompts)
    assert load_prompts(path, smoke_world / "images") == prompts
    sft = [{k: p[k] for k in ("id", "image", "prompt", "chosen", "source")} for p in prompts]
    io.write_jsonl(path, sft)
    assert load_prompts(path) == sft
    io.write_jsonl(path, [dict(prompts[0], rejected=" ")])
    with pytest.raises(io.DataError, match="record 1: field 'rejected' must be a non-empty string"):
        load_prompts(path)


def _cfg(**kw):
    base = dict(k=2, beta=0.1, lr=1e-3, steps=1, batch_size=3, lora_r=4, lora_alpha=8, max_new_tokens=10,
                log_samples_every=1, checkpoint_every=0, normalize="batch")
    return RLOOConfig(**{**base, **kw})


def test_one_step_trains_only_the_adapters_from_kl_zero(base_dir, rm_dir, prompts, smoke_world, tmp_path):
    summary = train_rloo(base_dir, rm_dir, prompts, _cfg(), tmp_path / "run", smoke_world / "images",
                         progress=False)
    assert summary["steps"] == 1
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert record["kl"] == 0.0 and record["kl/per_token"] == 0.0          # policy = reference before any update
    assert record["advantages/abs_mean"] > 0 and record["grad_norm"] > 0
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 2 and all(s["kl"] == 0.0 for s in samples)
    before, after = load_file(str(base_dir / "model.safetensors")), load_file(str(tmp_path / "run" / "model" /
                                                                                 "model.safetensors"))
    assert set(before) == set(after)
    for name in before:
        lora = "language_model" in name and name.endswith(tuple(f"{a}.weight" for a in ADAPTED))
        assert (not torch.equal(before[name], after[name])) == lora, name


def test_micro_batches_accumulate_to_the_same_update(base_dir, rm_dir, prompts, smoke_world, tmp_path):
    images = smoke_world / "images"
    for micro in (0, 1):
        train_rloo(base_dir, rm_dir, prompts, _cfg(micro_batch=micro), tmp_path / f"m{micro}", images, progress=False)
    a, b = (load_file(str(tmp_path / f"m{m}" / "model" / "model.safetensors")) for m in (0, 1))
    assert max((a[n] - b[n]).abs().max().item() for n in a) < 1e-6
    whole, split = (json.loads((tmp_path / f"m{m}" / "metrics.jsonl").read_text()) for m in (0, 1))
    assert split["loss"] == pytest.approx(whole["loss"], abs=1e-5) and split["kl"] == whole["kl"] == 0.0


def test_interrupted_run_regenerates_the_same_samples_and_weights(base_dir, rm_dir, prompts, smoke_world, tmp_path):
    cfg = _cfg(steps=3, normalize="dataset", seed=3)
    images = smoke_world / "images"
    train_rloo(base_dir, rm_dir, prompts, cfg, tmp_path / "full", images, progress=False)
    assert train_rloo(base_dir, rm_dir, prompts, cfg, tmp_path / "part", images, progress=False,
                      stop_after_steps=2) == {"stopped_at": 2, "total_steps": 3}
    with (tmp_path / "part" / "samples.jsonl").open("a") as f:     # a crash during step 3, after its samples
        f.write(json.dumps({"step": 3, "id": "x"}) + "\n")
    train_rloo(base_dir, rm_dir, prompts, cfg, tmp_path / "part", images, progress=False)
    a, b = (load_file(str(tmp_path / run / "model" / "model.safetensors")) for run in ("full", "part"))
    assert all(torch.equal(a[n], b[n]) for n in a)
    full, part = ((tmp_path / run / "samples.jsonl").read_text() for run in ("full", "part"))
    assert full == part and len(full.splitlines()) == 3 * 3 * 2
    metrics = [[{k: v for k, v in json.loads(x).items() if k != "seconds"}
                for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("full", "part")]
    assert metrics[0] == metrics[1] and [r["step"] for r in metrics[0]] == [1, 2, 3]
    assert metrics[0][-1]["kl"] != 0.0
    stats = io.read_json(tmp_path / "full" / "reward_stats.json")["stats"]
    assert stats["n"] == 2 * len(prompts) and stats["std"] > 0
    with pytest.raises(ValueError, match="another training config"):
        train_rloo(base_dir, rm_dir, prompts, _cfg(steps=3, normalize="dataset", seed=4), tmp_path / "part", images,
                   progress=False)
    with pytest.raises(ValueError, match="other prompts than this one"):
        train_rloo(base_dir, rm_dir, prompts[::-1], cfg, tmp_path / "part", images, progress=False)
    other = tmp_path / "other_rm"                                  # the same reward model, its head retrained
    shutil.copytree(rm_dir, other)
    save_file({k: 2 * v for k, v in load_file(str(other / "head.safetensors")).items()},
              str(other / "head.safetensors"))
    with pytest.raises(ValueError, match="another reward model than this one"):
        train_rloo(base_dir, other, prompts, cfg, tmp_path / "part", images, progress=False)


def test_train_rloo_command_end_to_end(base_dir, smoke_world, tmp_path):
    """train-rm, then train-rloo against it on the same preference file's prompts."""
    prefs = tmp_path / "prefs.jsonl"
    io.write_jsonl(prefs, povid_like_pairs(smoke_world, n=8, seed=6))
    images = str(smoke_world / "images")
    assert main(["-q", "train-rm", "--model", str(base_dir), "--prefs", str(prefs), "--image-root", images,
                 "--out", str(tmp_path / "rm_run"), "--lora-r", "4", "--lora-alpha", "8", "--lr", "1e-3",
                 "--batch-size", "8"]) == 0
    out = tmp_path / "rloo"
    assert main(["-q", "train-rloo", "--model", str(base_dir), "--rm", str(tmp_path / "rm_run" / "rm"), "--prompts",
                 str(prefs), "--image-root", images, "--out", str(out), "--k", "2", "--steps", "2", "--batch-size",
                 "2", "--max-new-tokens", "8", "--lora-r", "4", "--lora-alpha", "8", "--log-samples-every",
                 "1"]) == 0
    assert (out / "model" / "config.json").is_file() and (out / "manifest.json").is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert {"loss", "rewards/raw_mean", "rewards/raw_std", "kl", "advantages/std", "response/length",
            "response/empty_share", "response/distinct_per_prompt", "grad_norm"} <= set(lines[0])
    assert io.read_json(out / "manifest.json")["params"]["k"] == 2
    assert (out / "reward_stats.json").is_file()                   # the default: the paper's dataset statistics
    assert main(["-q", "train-rloo", "--model", str(base_dir), "--rm", str(base_dir), "--prompts", str(prefs),
                 "--image-root", images, "--out", str(tmp_path / "bad")]) == 2
