"""Seeds and run manifests: what makes every number traceable to the code, packages and seed that produced it.

    >>> set_seed(0); derive_seed(0, "scene", 17)     # stable across processes and machines
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import logging
import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any, MutableMapping

import numpy as np

logger = logging.getLogger(__name__)

# torch's CPU kernels (ATen's vectorized ops, MKL, oneDNN) capped at AVX2: docs/reliability.md
PORTABLE_ISA = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
ISA_VARIABLES = tuple(PORTABLE_ISA)
MANIFEST_PACKAGES = (
    "mmstudy", "torch", "transformers", "tokenizers", "peft", "accelerate", "trl", "numpy", "pillow",
    "sentence-transformers", "papermill", "gradio",
)


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed from (seed, *parts) with a stable hash (Python's `hash()` of a str is salted per process)."""
    key = "\x1f".join([str(int(seed))] + [str(p) for p in parts]).encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def cap_vector_isa(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Cap torch's CPU kernels at AVX2 on x86-64 (`PORTABLE_ISA`), so that one seed trains the same model, bit for
    bit, on AVX2 and AVX-512 machines (wider vectors sum floats in another order, and training amplifies the
    difference). A variable already set is left alone; nothing is set off x86-64 or with MMSTUDY_NATIVE_ISA=1.
    Works only before torch runs its first kernel (it picks its instructions once): `import mmstudy` calls it.
    Returns the variables it set."""
    if environ.get("MMSTUDY_NATIVE_ISA") == "1" or platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    added = {k: v for k, v in PORTABLE_ISA.items() if k not in environ}
    environ.update(added)
    return added


def cpu_threads(requested: int = 0) -> int:
    """Threads for torch on the CPU: `requested` when > 0, else `OMP_NUM_THREADS` when set, else the cores this
    process may run on (`os.sched_getaffinity`, so `taskset -c 0 mmstudy ...` gets one thread). Two processes
    whose threads together exceed the cores slow each other by an order of magnitude (docs/study.md)."""
    if requested < 0:
        raise ValueError(f"threads must be >= 0 (0: OMP_NUM_THREADS, else the cores allowed), got {requested}")
    if requested:
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"OMP_NUM_THREADS={env!r} is not a positive whole number")
        return int(env)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def use_cpu_threads(requested: int = 0) -> int:
    """Set torch's threads to `cpu_threads(requested)` and export them as OMP_NUM_THREADS, so that the processes
    this one starts (papermill kernels, data workers) use as many; returns the number."""
    import torch  # here, not above: modules that only read runs (the report) stay free of torch

    n = cpu_threads(requested)
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    return n


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) in one place."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_state(path: str | Path = ".") -> dict:
    """The git commit and dirty flag of the checkout holding `path`, or nulls outside a checkout."""
    def _git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def package_versions(names: tuple[str, ...] = MANIFEST_PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_manifest(seed: int, command: str, params: dict | None = None) -> dict:
    """What produced a result: git commit, package versions, seed, command, machine and time. On the CPU the
    vector instructions torch's kernels use (`cpu_capability`, and the `ISA_VARIABLES` that cap them) change float
    sums, so they are recorded too."""
    import torch

    return {
        "command": command,
        "seed": seed,
        "params": params or {},
        "git": git_state(Path(__file__).resolve().parent),
        "packages": package_versions(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_caps": {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ},
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
