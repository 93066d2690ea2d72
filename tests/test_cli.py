"""The `mmstudy` command end to end on the smoke profile, and its errors.

Run: pytest tests/test_cli.py        (the default-profile acceptance run: pytest -m slow tests/test_acceptance.py)
"""

import json
import runpy
import sys

import pytest

from mmstudy.cli import main


def test_world_train_eval_chain(tmp_path, caplog):
    world, model, results = tmp_path / "world", tmp_path / "model", tmp_path / "run" / "results.json"
    assert main(["-q", "world", "--out", str(world), "--profile", "smoke", "--seed", "0"]) == 0
    assert main(["-q", "world", "--out", str(world), "--profile", "smoke"]) == 2, "refuses to overwrite"
    assert main(["-q", "train-base", "--world", str(world), "--out", str(model), "--profile", "smoke"]) == 0
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    assert not (tmp_path / "model.stages").exists(), "stage checkpoints are removed after success"
    train = json.loads((model / "mmstudy_train.json").read_text())
    assert [s["stage"] for s in train["stages"]] == ["language", "vision", "projector", "instruct"]
    assert train["manifest"]["seed"] == 0 and train["manifest"]["packages"]["torch"].startswith("2.13.0")
    assert main(["-q", "eval", "--model", str(model), "--world", str(world), "--benchmarks", "pope,chair",
                 "--limit", "6", "--out", str(results)]) == 0
    out = json.loads(results.read_text())
    assert "pope/adversarial/accuracy" in out["metrics"] and "chair/chair_i" in out["metrics"]
    assert "commit" in out["manifest"]["git"]
    samples = [json.loads(line) for line in (results.parent / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 6 + 6


def test_eval_refuses_a_model_that_is_not_llava(tmp_path, smoke_world, caplog):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    rc = main(["eval", "--model", str(bert), "--world", str(smoke_world), "--out", str(tmp_path / "r.json")])
    assert rc == 2
    assert "not a LLaVA checkpoint" in caplog.text and str(bert) in caplog.text
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "samples.jsonl").exists()


def test_eval_help_names_every_benchmark_it_runs(capsys):
    """`mmstudy eval --help` lists the benchmarks from the runners themselves (headroom was once left out)."""
    from mmstudy.evaluation.evaluate import RUNNERS

    with pytest.raises(SystemExit) as done:
        main(["eval", "--help"])
    assert done.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in RUNNERS) and "headroom" in help_text


def test_python_dash_m_entry_point(monkeypatch, capsys):
    """What `python -m mmstudy --help` runs, in this process (the launcher tests start it in others)."""
    monkeypatch.setattr(sys, "argv", ["mmstudy", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("mmstudy", run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("world", "train-base", "eval"):
        assert command in out
