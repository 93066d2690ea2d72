"""kill -9 at random points of DPO training and of BDHS generation, then the same command again: the results equal
those of a run that was never interrupted, bit for bit.   Run: pytest -m slow tests/test_kill_resume.py

Each trial starts the job in a subprocess, sends SIGKILL after a seeded random share (25-95 %) of the
uninterrupted run's wall time (so some kills land while the model loads, some mid-step, some mid-write), reruns
it to the end and compares: DPO's saved weights and its per-step log (wall-clock times aside), BDHS's output
file byte for byte. Five trials each.
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


def _run(command: list[str], kill_after: float | None = None) -> float:
    """Run `command` to its end (an error fails the test), or kill it with SIGKILL after `kill_after` seconds;
    returns the wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return time.perf_counter() - start
    assert proc.returncode == 0, err.decode()[-3000:]
    return time.perf_counter() - start


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _trials(command_for, compare, progress_of, tmp_path: Path) -> list[tuple[float, int]]:
    """The uninterrupted reference run, then TRIALS killed-and-resumed runs, each compared with it; returns (kill
    time, work done when killed: `progress_of(run directory)`) per trial. At least one kill must land mid-run."""
    reference = tmp_path / "reference"
    wall = _run(command_for(reference))
    total = progress_of(reference)
    rng = random.Random(0)
    kills = []
    for trial in range(TRIALS):
        out = tmp_path / f"trial{trial}"
        at = round(rng.uniform(0.25, 0.95) * wall, 2)
        _run(command_for(out), kill_after=at)
        kills.append((at, progress_of(out)))
        _run(command_for(out))
        compare(reference, out)
    assert any(0 < done < total for _, done in kills), (kills, total)
    return kills


def _steps(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in io.read_jsonl(run / "metrics.jsonl")]


def _weights(run: Path) -> dict:
    files = sorted((run / "model").glob("*.safetensors"))
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(f).items()}


def test_dpo_killed_at_random_points_resumes_to_the_same_weights(base_dir, smoke_world, tmp_path):
    prefs = tmp_path / "pairs.jsonl"
    io.write_jsonl(prefs, povid_like_pairs(smoke_world, n=32, seed=0, progress=False))

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "mmstudy", "-q", "--threads", "1", "train-dpo", "--model", str(base_dir),
                "--prefs", str(prefs), "--image-root", str(smoke_world / "images"), "--out", str(out),
                "--lora-r", "4", "--lora-alpha", "8", "--epochs", "2", "--batch-size", "2", "--lr", "1e-3",
                "--checkpoint-every", "3", "--seed", "1"]

    def compare(a: Path, b: Path) -> None:
        wa, wb = _weights(a), _weights(b)
        assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa), b
        assert _steps(a) == _steps(b), b

    kills = _trials(command, compare, lambda run: _lines(run / "metrics.jsonl"), tmp_path)
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
