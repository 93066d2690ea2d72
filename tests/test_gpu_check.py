"""bench/gpu_check.py end to end on the CPU with --tiny: the same code path as the 7B-shaped GPU check, in seconds."""

import json
import subprocess
import sys
from pathlib import Path

import torch
import transformers

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def test_gpu_check_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    # one thread: the tiny model gains nothing from more, and spinning threads slow a busy machine badly
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--threads", "1", "--out", str(out),
           "--workdir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: ok ") and "dpo_steps_per_s=" in last and "bdhs_speedup=" in last

    results = json.loads(out.read_text())
    assert results["ok"] is True and "fatal" not in results and results["scale"] == "tiny"
    assert results["info"]["torch"] == torch.__version__
    assert results["info"]["transformers"] == transformers.__version__
    assert results["info"]["device"] == "cpu" and results["info"]["name"]
    assert results["wall_seconds"] > 0 and results["model"]["params"] > results["model"]["lm_params"] > 0

    assert results["matmul"]["ok"] and results["matmul"]["dtype"] == "float32" and results["matmul"]["tflops"] > 0

    dpo = results["dpo"]
    assert dpo["ok"] and dpo["batch"] == 2 and dpo["steps"] == 3 and dpo["timed_steps"] == 2
    assert dpo["steps_per_s"] > 0 and dpo["pairs_per_s"] > 0 and dpo["tokens_per_s"] > 0
    assert dpo["flops_per_step"] > 0 and dpo["achieved_tflops"] > 0 and dpo["mfu"] > 0
    assert dpo["image_tokens_per_pair"] > 0

    bdhs = results["bdhs"]
    assert bdhs["ok"] and bdhs["examples"] == 4 and bdhs["sentences"] >= 4
    assert bdhs["batched_tokens_per_s"] > 0 and bdhs["loop_tokens_per_s"] > 0 and bdhs["speedup"] > 0
    assert 0 <= bdhs["identical_outputs"] <= bdhs["examples"]

    ev = results["eval"]
    assert ev["ok"] and ev["pope"]["items"] == 9 and ev["chair"]["items"] == 3      # 3 per POPE split, 3 captions
    assert ev["pope"]["items_per_s"] > 0 and ev["chair"]["items_per_s"] > 0

    launch = results["launch"]
    assert launch["status"] == "ok" and launch["ok"] and launch["returncode"] == 0, launch.get("error")
    assert launch["wall_seconds"] > 0 and launch["steps_logged"] == launch["expected_steps"] == 3
    assert "accelerate.commands.launch" in launch["command"] and "train-dpo" in launch["command"]

    hourly = results["per_gpu_hour"]
    assert all(v and v > 0 for v in hourly.values()), hourly
