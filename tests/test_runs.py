"""Run helpers: CPU threads follow the request, then OMP_NUM_THREADS, then the cores the process may use.

Run: pytest tests/test_runs.py
"""

import os

import pytest
import torch

from mmstudy import cli, runs


@pytest.fixture()
def restore_threads():
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


def test_cpu_threads_prefers_the_request_then_the_environment_then_the_allowed_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert runs.cpu_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runs.cpu_threads() == 1
    assert runs.cpu_threads(4) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='two'"):
        runs.cpu_threads()
    with pytest.raises(ValueError, match="threads must be >= 0"):
        runs.cpu_threads(-1)


def test_use_cpu_threads_sets_torch_and_exports_the_number_to_child_processes(restore_threads):
    assert runs.use_cpu_threads(1) == 1
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"


def test_the_cli_refuses_a_negative_thread_count(tmp_path, caplog, restore_threads):
    assert cli.main(["--threads", "-1", "world", "--out", str(tmp_path / "w"), "--profile", "smoke"]) == 2
    assert "threads must be >= 0" in caplog.text and not (tmp_path / "w").exists()
