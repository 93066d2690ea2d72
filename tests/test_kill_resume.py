"""kill -9 at random points of every resumable job (DPO, BDHS, base training, Online-DPO, reward model, RLOO,
GRPO), then the same command again: the results equal those of a run that was never interrupted, bit for bit.
Run: pytest -m slow tests/test_kill_resume.py

Each trial starts the job in a subprocess, sends SIGKILL after a seeded random share (25-95 %) of the
uninterrupted run's wall time (so some kills land while the model loads, some mid-step, some mid-write), reruns
it to the end and compares: saved weights and the per-step log (wall-clock times aside), sampled responses where
the job logs them, BDHS's output file byte for byte. Five trials for DPO and BDHS, three for the others.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mmstudy import io
from mmstudy.editions.povid import povid_like_pairs

pytestmark = pytest.mark.slow
TRIALS = 5
OTHER_TRIALS = 3          # the other jobs: base training, Online-DPO, reward model, RLOO, GRPO

BDHS_JOB = """
import sys
from pathlib import Path

import numpy as np

from mmstudy.data.bdhs import BDHSConfig, ImageLoader, load_examples, run_bdhs
from mmstudy.models.llava import load_llava


class Overlap:
    name = "word-overlap"

    def similarity(self, a, b):
        sets = [(set(x.lower().split()), set(y.lower().split())) for x, y in zip(a, b)]
        return np.array([len(x & y) / max(1, len(x | y)) for x, y in sets])


model_dir, world, out = map(Path, sys.argv[1:4])
model, processor = load_llava(model_dir)
examples = load_examples(world / "llava_instruct_train.json", world / "images", n=32, seed=0)
run_bdhs(model, processor, examples, BDHSConfig(rho_th=0.99, iterations=2, epsilon=0.6), Overlap(),
         ImageLoader(world / "images"), out, {"model": str(model_dir)}, chunk_size=4, batch_size=4, progress=False)
"""


def _run(command: list[str], kill_after: float | None = None, kill_when=None) -> float:
    """Run `command` to its end (an error fails the test), or kill it with SIGKILL after `kill_after` seconds or
    as soon as `kill_when()` holds; returns the wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        if kill_when is not None:                  # poll until the job has done that much work, then kill it
            while proc.poll() is None and not kill_when():
                time.sleep(0.02)
            raise subprocess.TimeoutExpired(command, 0)
        _, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return time.perf_counter() - start
    assert proc.returncode == 0, err.decode()[-3000:]
    return time.perf_counter() - start


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _trials(command_for, compare, progress_of, tmp_path: Path, trials: int = TRIALS) -> list[tuple[float, int]]:
    """The uninterrupted reference run, then `trials` killed-and-resumed runs, each compared with it; returns (kill
    time, work done when killed: `progress_of(run directory)`) per trial. Even trials kill at a random share of
    the reference's wall time (loading, stepping or saving, as it falls); odd ones as soon as a random share of
    the work is logged, so that some kills land mid-run however long the job takes to load."""
    reference = tmp_path / "reference"
    wall = _run(command_for(reference))
    total = progress_of(reference)
    rng = random.Random(0)
    kills = []
    for trial in range(trials):
        out = tmp_path / f"trial{trial}"
        at = round(rng.uniform(0.25, 0.95) * wall, 2)
        target = rng.randint(1, max(1, total // 2))
        took = _run(command_for(out), kill_after=at, kill_when=(lambda o=out, t=target: progress_of(o) >= t)
                    if trial % 2 else None)
        kills.append((round(took, 2), progress_of(out)))
        _run(command_for(out))
        compare(reference, out)
    assert any(0 < done < total for _, done in kills), (kills, total)
    return kills


def _steps(run: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in io.read_jsonl(run / name)]


def _weights(run: Path, model: str = "model") -> dict:
    files = sorted((run / model).rglob("*.safetensors"))
    return {f"{f.relative_to(run)}:{k}": v for f in files for k, v in load_file(f).items()}


def _same_weights(a: Path, b: Path, model: str = "model") -> None:
    wa, wb = _weights(a, model), _weights(b, model)
    assert wa and wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa), b


def _same_run(*logs: str, model: str = "model"):
    """A `compare` for `_trials`: the same weights under `model`, and the same records in each of `logs`."""
    def compare(a: Path, b: Path) -> None:
        _same_weights(a, b, model)
        for name in logs:
            assert _steps(a, name) == _steps(b, name), (b, name)
    return compare


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmstudy", "-q", "--threads", "1", *args]


@pytest.fixture(scope="module")
def prefs(smoke_world, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kill") / "pairs.jsonl"
    io.write_jsonl(path, povid_like_pairs(smoke_world, n=32, seed=0, progress=False))
    return path


def test_dpo_killed_at_random_points_resumes_to_the_same_weights(base_dir, smoke_world, prefs, tmp_path):
    def command(out: Path) -> list[str]:
        return _cli("train-dpo", "--model", str(base_dir), "--prefs", str(prefs), "--image-root",
                    str(smoke_world / "images"), "--out", str(out), "--lora-r", "4", "--lora-alpha", "8", "--epochs",
                    "2", "--batch-size", "2", "--lr", "1e-3", "--checkpoint-every", "3", "--seed", "1")

    kills = _trials(command, _same_run("metrics.jsonl"), lambda run: _lines(run / "metrics.jsonl"), tmp_path)
    assert len(_steps(tmp_path / "reference")) == 32
    print(json.dumps({"dpo_kills (seconds, steps logged)": kills}))  # noqa: T201


def test_bdhs_killed_at_random_points_resumes_to_the_same_file(base_dir, smoke_world, tmp_path):
    def command(out: Path) -> list[str]:
        return [sys.executable, "-c", BDHS_JOB, str(base_dir), str(smoke_world), str(out / "bdhs.jsonl")]

    def compare(a: Path, b: Path) -> None:
        assert (b / "bdhs.jsonl").read_bytes() == (a / "bdhs.jsonl").read_bytes(), b
        assert not (b / "bdhs.jsonl.partial").exists()

    kills = _trials(command, compare,
                    lambda run: _lines(run / "bdhs.jsonl.partial") or _lines(run / "bdhs.jsonl"), tmp_path)
    assert len(io.read_jsonl(tmp_path / "reference" / "bdhs.jsonl")) == 32
    print(json.dumps({"bdhs_kills (seconds, pairs written)": kills}))  # noqa: T201


def test_base_training_killed_at_random_points_resumes_to_the_same_model(smoke_world, tmp_path):
    """Base training checkpoints after each of its four stages; a kill inside a stage redoes that stage."""
    def command(out: Path) -> list[str]:
        return _cli("train-base", "--world", str(smoke_world), "--out", str(out / "model"), "--profile", "smoke")

    def stages_done(run: Path) -> int:
        return 4 if (run / "model" / "mmstudy_train.json").is_file() else len(list(run.glob("model.stages/*.pt")))

    kills = _trials(command, _same_run(), stages_done, tmp_path, OTHER_TRIALS)
    print(json.dumps({"base_kills (seconds, stages done)": kills}))  # noqa: T201


def test_online_dpo_killed_at_random_points_resumes_to_the_same_weights(base_dir, smoke_world, prefs, tmp_path):
    def command(out: Path) -> list[str]:
        return _cli("train-online", "--model", str(base_dir), "--prompts", str(prefs), "--image-root",
                    str(smoke_world / "images"), "--world", str(smoke_world), "--judge", "oracle:0.2", "--mode",
                    "mixed", "--out", str(out), "--lora-r", "4", "--lora-alpha", "8", "--epochs", "1",
                    "--batch-size", "4", "--lr", "1e-3", "--max-new-tokens", "12", "--checkpoint-every", "1",
                    "--seed", "2")

    kills = _trials(command, _same_run("metrics.jsonl"), lambda run: _lines(run / "metrics.jsonl"), tmp_path,
                    OTHER_TRIALS)
    print(json.dumps({"online_kills (seconds, steps logged)": kills}))  # noqa: T201


def _reward_command(base_dir: Path, prefs: Path, images: Path, out: Path) -> list[str]:
    return _cli("train-rm", "--model", str(base_dir), "--prefs", str(prefs), "--image-root", str(images), "--out",
                str(out), "--lora-r", "4", "--lora-alpha", "8", "--lr", "1e-3", "--epochs", "2", "--batch-size",
                "4", "--checkpoint-every", "2", "--seed", "1")


def test_reward_model_killed_at_random_points_resumes_to_the_same_model(base_dir, smoke_world, prefs, tmp_path):
    kills = _trials(lambda out: _reward_command(base_dir, prefs, smoke_world / "images", out),
                    _same_run("metrics.jsonl", model="rm"), lambda run: _lines(run / "metrics.jsonl"), tmp_path,
                    OTHER_TRIALS)
    print(json.dumps({"reward_model_kills (seconds, steps logged)": kills}))  # noqa: T201


def test_rloo_killed_at_random_points_resumes_to_the_same_weights_and_samples(base_dir, smoke_world, prefs,
                                                                              tmp_path):
    _run(_reward_command(base_dir, prefs, smoke_world / "images", tmp_path / "rm_run"))
    rm = tmp_path / "rm_run" / "rm"

    def command(out: Path) -> list[str]:
        return _cli("train-rloo", "--model", str(base_dir), "--rm", str(rm), "--prompts", str(prefs), "--image-root",
                    str(smoke_world / "images"), "--out", str(out), "--k", "2", "--steps", "6", "--batch-size", "4",
                    "--max-new-tokens", "12", "--lora-r", "4", "--lora-alpha", "8", "--lr", "1e-3",
                    "--checkpoint-every", "1", "--log-samples-every", "1", "--seed", "3")

    kills = _trials(command, _same_run("metrics.jsonl", "samples.jsonl"), lambda run: _lines(run / "metrics.jsonl"),
                    tmp_path, OTHER_TRIALS)
    print(json.dumps({"rloo_kills (seconds, steps logged)": kills}))  # noqa: T201


def test_grpo_killed_at_random_points_resumes_to_the_same_weights_and_samples(base_dir, smoke_world, prefs,
                                                                              tmp_path):
    def command(out: Path) -> list[str]:
        return _cli("train-grpo", "--model", str(base_dir), "--prompts", str(prefs), "--world", str(smoke_world),
                    "--out", str(out), "--k", "3", "--batch-size", "4", "--steps", "4", "--updates", "2",
                    "--max-new-tokens", "12", "--lora-r", "4", "--lora-alpha", "8", "--lr", "1e-3",
                    "--checkpoint-every", "1", "--log-samples-every", "1", "--seed", "3")

    kills = _trials(command, _same_run("metrics.jsonl", "samples.jsonl"), lambda run: _lines(run / "metrics.jsonl"),
                    tmp_path, OTHER_TRIALS)
    print(json.dumps({"grpo_kills (seconds, steps logged)": kills}))  # noqa: T201
