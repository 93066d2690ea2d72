"""Stage functions of the notebooks (mmstudy.study.stages) beyond what the smoke chain exercises: the paper profile's
external checkpoint and converted data, training launched in other processes, and the paper profile's plan."""

import os
import shutil
import sys

import pytest
from safetensors.torch import load_file

from mmstudy import io
from mmstudy.editions.povid import povid_like_pairs
from mmstudy.models.decoding import parse_decoding
from mmstudy.study import stages
from mmstudy.training.dpo import DPOTrainConfig


@pytest.fixture
def external_base(base_dir, smoke_world, tmp_path):
    """A 01 run directory that links the smoke model and the smoke world, as the paper profile links its own."""
    run = tmp_path / "01_world_base"
    stages.link_external(run, base_dir, smoke_world)
    return run


def test_link_external_links_a_checkpoint_and_data_and_refuses_other_targets(external_base, base_dir,
                                                                              smoke_world, tmp_path):
    assert (external_base / "model").resolve() == base_dir.resolve()
    assert (external_base / "world" / "images").is_dir()
    stages.link_external(external_base, base_dir, smoke_world)                  # again: kept
    with pytest.raises(io.DataError, match="already points to"):
        stages.link_external(external_base, base_dir, smoke_world / "images")
    with pytest.raises(io.DataError, match="checkpoint directory not found"):
        stages.link_external(tmp_path / "other", tmp_path / "nope", smoke_world)
    with pytest.raises(ValueError, match="give both"):
        stages.link_external(tmp_path / "other", base_dir, "")


def test_converted_data_writes_each_named_source_once(external_base, smoke_world, tmp_path):
    pairs = povid_like_pairs(smoke_world, n=12, seed=0)
    released = tmp_path / "released.jsonl"              # the TRL format, one of the released layouts we convert
    io.write_jsonl(released, [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
                               "images": [p["image"]]} for p in pairs])
    out = tmp_path / "02"
    counts = stages.converted_data(out, external_base, sources=[f"povid=trl:{released}"], subsample=5, seed=1)
    assert counts == {"pairs/povid": 5}
    stamp = (out / "povid.jsonl").stat().st_mtime_ns
    assert stages.converted_data(out, external_base, sources=[f"povid=trl:{released}"], subsample=5, seed=1) == counts
    assert (out / "povid.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="expected NAME=KIND:PATH"):
        stages.converted_data(out, external_base, sources=["povid:released.jsonl"])


def test_launch_command_reproduces_the_config():
    cfg = DPOTrainConfig(loss="ipo", beta=0.9, lora_r=128, lora_alpha=256, lr=1e-6, epochs=3, batch_size=16,
                         train_projector=True, seed=4)
    from pathlib import Path

    cmd = stages.launch_command("accelerate launch --num_processes 8", Path("run"), Path("base"),
                                Path("run/train_prefs.jsonl"), cfg, None, "cuda")
    assert cmd[:6] == ["accelerate", "launch", "--num_processes", "8", "-m", "mmstudy"]
    text = " ".join(cmd)
    for option in ("train-dpo", "--loss ipo", "--beta 0.9", "--lora-r 128", "--lora-alpha 256", "--lr 1e-06",
                   "--epochs 3", "--batch-size 16", "--device cuda", "--seed 4", "--prefs run/train_prefs.jsonl",
                   "--model base/model", "--image-root base/world/images"):
        assert option in text, option
    assert "--train-projector" in cmd
    frozen_lm = DPOTrainConfig(train_lm=False, lora_r=0, train_projector=True)
    online = stages.launch_command("accelerate launch", Path("run"), Path("base"), Path("p.jsonl"), frozen_lm,
                                   {"mode": "mixed", "judge": "oracle:0.2", "k": 3}, "cpu")
    text = " ".join(online)
    assert "train-online" in online and "--freeze-lm" in online and "--prompts p.jsonl" in text
    assert "--mode mixed" in text and "--judge oracle:0.2" in text and "--k 3" in text
    assert "--world" not in online            # base/world holds no world.json: real data has no ground truth


def test_launch_command_parses_back_to_the_same_configs():
    """The launched command line, read by mmstudy's own parser, gives back the training and online settings."""
    from pathlib import Path

    from mmstudy.cli import build_parser
    from mmstudy.study import options

    cfg = DPOTrainConfig(loss="avg_dpo", gamma=0.3, lora_r=0, lr=2e-5, train_projector=False, train_lm=True,
                         max_length=300, on_too_long="skip", checkpoint_every=7, merge=False, seed=9,
                         warmup_ratio=0.3, lora_target=r".*\.q_proj")
    online = {"mode": "online_bdhs_avg", "k": 2, "temperature": 0.7, "max_new_tokens": 33, "p_offline": 0.25,
              "judge": "oracle", "rho_th": 0.98, "iterations": 3, "embedder": "emb"}
    cmd = stages.launch_command("accelerate launch", Path("run"), Path("base"), Path("p.jsonl"), cfg, online, "cpu")
    args = build_parser().parse_args(cmd[4:])
    assert options.from_args(args, options.DPO) == cfg
    assert (args.mode, args.k, args.temperature, args.max_new_tokens, args.p_offline, args.rho, args.iterations,
            str(args.embedder), str(args.prompts)) == ("online_bdhs_avg", 2, 0.7, 33, 0.25, 0.98, 3, "emb", "p.jsonl")


def test_align_launched_on_two_processes_trains_the_same_model(base_dir, smoke_world, tmp_path, monkeypatch):
    """`align` with a launcher, `accelerate launch` with two CPU processes (DDP over gloo), trains through
    `mmstudy train-dpo`: each process takes half of every global batch, and the averaged gradients give the
    weights of the in-process run."""
    base = tmp_path / "01"
    stages.link_external(base, base_dir, smoke_world)
    prefs = tmp_path / "prefs.jsonl"
    io.write_jsonl(prefs, povid_like_pairs(smoke_world, n=24, seed=0))
    dpo = DPOTrainConfig(lora_r=4, lora_alpha=8, lr=1e-3, epochs=1, batch_size=8, seed=3)
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    launcher = f"{accelerate} launch --cpu --num_processes 2 --num_machines 1 --mixed_precision no " \
               "--dynamo_backend no"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")          # two processes on two cores
    runs = {}
    io.write_json(tmp_path / "launched" / "manifest.json", {"stage": "05_offline"})    # as `execute` writes it
    for name, launch in (("here", ""), ("launched", launcher)):
        stages.align(tmp_path / name, base, prefs=prefs, dpo=dpo, max_pairs=16, benchmarks=["pope"], limit=8,
                     launch=launch, progress=False)
        runs[name] = load_file(str(tmp_path / name / "model" / "model.safetensors"))
    assert io.read_json(tmp_path / "launched" / "train_summary.json")["pairs"] == 16
    assert len(io.read_jsonl(tmp_path / "launched" / "train_prefs.jsonl")) == 16
    assert [r["pairs"] for r in io.read_jsonl(tmp_path / "launched" / "metrics.jsonl")] == [8, 8]   # logged once
    here, launched = runs["here"], runs["launched"]
    assert set(here) == set(launched)
    assert max((here[n] - launched[n]).abs().max().item() for n in here) < 1e-5
    assert (tmp_path / "launched" / "eval" / "results.json").is_file()
    assert io.read_json(tmp_path / "launched" / "manifest.json") == {"stage": "05_offline"}     # kept
    assert "train-dpo" in io.read_json(tmp_path / "launched" / "train_manifest.json")["command"]


def test_paper_profile_plan_uses_the_checkpoint_and_released_data(tmp_path):
    from mmstudy.study.pipeline import plan

    jobs = {str(d.relative_to(tmp_path / "paper")): p for _, d, p, _ in plan("paper", [0], tmp_path)}
    assert jobs["01_world_base"]["model_path"] == "data/llava-v1.6-vicuna-7b-hf"
    assert jobs["02_preference_data/s0"]["sources"][0].startswith("povid=povid:")
    assert jobs["04_data_review"]["names"] == ["povid", "ranking", "correction", "bdhs"]
    offline = jobs["05_offline/povid/s0"]
    assert (offline["lora_r"], offline["lora_alpha"], offline["train_projector"], offline["launch"]) == (
        128, 256, True, "accelerate launch")
    assert jobs["06_online/online_dpo/s0"]["judge"].startswith("local:")
    sweep = plan("paper", [0], tmp_path, only=["07_ablations"])
    assert all(p["device"] == "cuda" and p["launch"] == "accelerate launch" for _, _, p, _ in sweep)
    sizes = {f"{p['axis']}/{p['point']}": p["size"] for _, _, p, _ in sweep}
    assert sizes["loss/ipo"] == 0 and sizes["annotator/llava7b"] == 0       # as the full-POVID chain runs
    assert sizes["rho_th/rho0.98"] == sizes["povid_plus/attn"] == 5000     # as the chain's BDHS (5k)


def test_evaluate_into_keeps_an_evaluation_of_the_same_data_and_redoes_one_of_other_data(base_dir, smoke_world,
                                                                                       tmp_path):
    import shutil

    world = tmp_path / "world"
    shutil.copytree(smoke_world, world)
    out = tmp_path / "eval"
    first = stages.evaluate_into(base_dir, world, out, ["pope"], limit=6, progress=False)
    io.write_json(out / "shift.json", {"kl": 0.1})                       # derived from these samples
    stamp = (out / "samples.jsonl").stat().st_mtime_ns
    assert stages.evaluate_into(base_dir, world, out, ["pope"], limit=6, progress=False) == first
    assert (out / "samples.jsonl").stat().st_mtime_ns == stamp and (out / "shift.json").is_file()
    made = io.read_json(out / "results.json")
    del made["manifest"]["params"]["decoding"]                        # made before --decoding existed: greedy
    io.write_json(out / "results.json", made)
    assert stages.evaluate_into(base_dir, world, out, ["pope"], limit=6, decoding="greedy", progress=False) == first
    assert (out / "samples.jsonl").stat().st_mtime_ns == stamp
    stages.evaluate_into(base_dir, world, out, ["pope"], limit=6, decoding="pai", progress=False)   # another method
    assert io.read_json(out / "results.json")["manifest"]["params"]["decoding"] == str(parse_decoding("pai"))
    stages.evaluate_into(base_dir, world, out, ["pope"], limit=6, progress=False)
    stamp = (out / "samples.jsonl").stat().st_mtime_ns
    info = io.read_json(world / "world.json")
    io.write_json(world / "world.json", {**info, "version": info["version"] + 1})   # other benchmark items
    stages.evaluate_into(base_dir, world, out, ["pope"], limit=6, progress=False)
    assert (out / "samples.jsonl").stat().st_mtime_ns != stamp
    assert not (out / "shift.json").exists()
    assert io.read_json(out / "results.json")["manifest"]["params"]["data_version"] == stages.data_version(world)


def test_evaluate_into_refuses_an_evaluation_whose_judge_calls_all_failed(base_dir, smoke_world, tmp_path,
                                                                          monkeypatch):
    """As `mmstudy eval`: the answers are kept, but no results.json, so the stage fails and a rerun evaluates
    again instead of keeping judged metrics that are missing."""
    from mmstudy.judges.base import OracleJudge

    class DownJudge(OracleJudge):        # answers, but counts every call as failed
        def complete(self, requests):
            replies = super().complete(requests)
            self.stats["failures"] = self.stats["requests"]
            return replies

    monkeypatch.setattr(stages, "make_judge", lambda spec, **kw: DownJudge(0.0))
    out = tmp_path / "eval"
    with pytest.raises(ValueError, match="every one of the 2 calls to judge"):
        stages.evaluate_into(base_dir, smoke_world, out, ["mmhal"], limit=2, judge="http:x", progress=False)
    assert (out / "samples.jsonl").is_file() and not (out / "results.json").exists()


def test_reinforce_runs_grpo_writes_its_curve_and_flags_and_keeps_a_finished_run(external_base, smoke_world,
                                                                                 tmp_path):
    """The sweep's `rl` axis through its stage function (the smoke sweep runs the RLOO point as a notebook)."""
    prompts = tmp_path / "prompts.jsonl"
    io.write_jsonl(prompts, povid_like_pairs(smoke_world, n=12, seed=0))
    rl = stages.rl_config("grpo", k=2, temperature=1.0, max_new_tokens=8, lora_r=4, lora_alpha=8, lr=1e-3,
                          beta=0.04, steps=2, batch_size=4, seed=1)
    run = tmp_path / "grpo"
    metrics = stages.reinforce(run, external_base, prompts=prompts, mode="grpo", rl=rl, size=8,
                               benchmarks=["pope"], limit=4, progress=False)
    assert metrics["train/steps"] == 2 and metrics["train/prompts"] == 8
    assert metrics["rl/steps"] == 2 and metrics["rl/collapsed"] in (0.0, 1.0)
    assert "eval/pope/adversarial/accuracy" in metrics
    curve = io.read_jsonl(run / "rl_curve.jsonl")
    assert [row["step"] for row in curve] == [1, 2] and all(row["samples"] == 8 for row in curve)
    samples = io.read_jsonl(run / "samples.jsonl")
    assert {"image", "prompt", "response", "reward"} <= set(samples[0])
    stamp = (run / "model" / "model.safetensors").stat().st_mtime_ns
    assert stages.reinforce(run, external_base, prompts=prompts, mode="grpo", rl=rl, size=8, benchmarks=["pope"],
                            limit=4, progress=False) == metrics
    assert (run / "model" / "model.safetensors").stat().st_mtime_ns == stamp          # kept, not retrained
    with pytest.raises(ValueError, match="mode rloo needs reward_prefs"):
        stages.reinforce(tmp_path / "rloo", external_base, prompts=prompts, mode="rloo", rl=rl)
    with pytest.raises(ValueError, match="unknown RL mode"):
        stages.rl_config("ppo", k=2)


def test_a_decoding_point_evaluates_the_base_model_decoded_so_and_trains_nothing(base_dir, smoke_world, tmp_path):
    base = tmp_path / "01_world_base"
    base.mkdir()
    (base / "model").symlink_to(base_dir)
    (base / "world").symlink_to(smoke_world)
    run = tmp_path / "decoding" / "vcd"
    metrics = stages.decoded(run, base, decoding="vcd", benchmarks=["pope"], limit=4, progress=False)
    assert metrics["train/steps"] == 0 and metrics["decoding"] == "vcd:alpha=1,beta=0.1,noise_steps=500"
    assert 0 <= metrics["eval/pope/adversarial/accuracy"] <= 1 and metrics["eval/seconds_per_item"] > 0
    assert io.read_json(run / "eval" / "results.json")["manifest"]["params"]["decoding"] == metrics["decoding"]
    stamp = (run / "eval" / "samples.jsonl").stat().st_mtime_ns
    assert stages.decoded(run, base, decoding="vcd:alpha=1", benchmarks=["pope"], limit=4, progress=False) == metrics
    assert (run / "eval" / "samples.jsonl").stat().st_mtime_ns == stamp          # the same method: kept
