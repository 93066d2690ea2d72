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


def test_manifest_records_the_vector_instructions_behind_the_float_sums(monkeypatch):
    """Another instruction set sums floats in another order, so the same seed can train another model: the
    manifest says which one ran, and which caps were set."""
    for name in runs.ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    manifest = runs.build_manifest(0, "test")
    assert manifest["isa_caps"] == {"ATEN_CPU_CAPABILITY": "avx2"}
    assert manifest["cpu_capability"] == torch.backends.cpu.get_cpu_capability() != ""


def test_cap_vector_isa_sets_what_is_unset_on_x86_only(monkeypatch):
    monkeypatch.setattr(runs.platform, "machine", lambda: "x86_64")
    env = {"MKL_ENABLE_INSTRUCTIONS": "AVX512"}
    assert runs.cap_vector_isa(env) == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert env["MKL_ENABLE_INSTRUCTIONS"] == "AVX512"                      # the user's own setting wins
    assert runs.cap_vector_isa({"MMSTUDY_NATIVE_ISA": "1"}) == {}
    monkeypatch.setattr(runs.platform, "machine", lambda: "aarch64")
    assert runs.cap_vector_isa({}) == {}


def test_importing_mmstudy_caps_torch_kernels_in_a_fresh_process():
    """What makes the default study the same on AVX2 and AVX-512 machines (docs/reliability.md)."""
    import platform
    import subprocess
    import sys

    code = "import torch, mmstudy; torch.ones(2).softmax(0); print(torch.backends.cpu.get_cpu_capability())"
    env = {k: v for k, v in os.environ.items() if k not in (*runs.ISA_VARIABLES, "MMSTUDY_NATIVE_ISA")}
    capped, native = (subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True
                                     ).stdout.strip() for e in (env, {**env, "MMSTUDY_NATIVE_ISA": "1"}))
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert capped in ("AVX2", "DEFAULT") and native in ("AVX2", "AVX512", "DEFAULT")
    else:
        assert capped == native
