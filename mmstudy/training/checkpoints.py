"""Training-loop plumbing shared by the trainers (DPO and online DPO, reward model, RLOO): checkpoints, exact
resume, per-step logs, the seeded example order and the learning-rate schedule.

A checkpoint is `out/checkpoints/step_N/`: the trainable parameters, optimizer, scheduler and RNG states (read back
with `weights_only=True`: no code in a checkpoint runs), the run's settings hash (its configs and the digest of its
training records: a checkpoint of other settings or other data is refused), and optionally a JSON `extra` state
(e.g. the online pair source's cache). It is written to a temp dir and renamed. On resume the per-step logs are
cut back to the checkpoint's step, so a crash between checkpoints never leaves duplicate lines; a torn last line
(the one being written when the run stopped) is dropped.

    >>> step, extra = resume_run(out, model, optimizer, scheduler, run_identity(config=cfg, data=records_digest(r)))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from mmstudy import io

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"step_\d+")


def settings_hash(*configs) -> str:
    """A short hash of one or more dataclass configs (or dicts): what a checkpoint or a cache belongs to."""
    settings = [dataclasses.asdict(c) if dataclasses.is_dataclass(c) else c for c in configs]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


# what each part of a run's identity is, for the error that names the parts a resume would change
IDENTITY_PARTS = {"config": "another training config", "online": "another online config",
                  "data": "other training data", "prompts": "other prompts", "model": "another model",
                  "reward_model": "another reward model", "world": "another world", "images": "other images"}


def run_identity(**parts) -> dict[str, str]:
    """What a run's checkpoints belong to, part by part (`IDENTITY_PARTS`): a config (dataclass or dict) is
    hashed, a string (a records digest, a model fingerprint) kept; None parts are left out."""
    unknown = set(parts) - set(IDENTITY_PARTS)
    if unknown:
        raise ValueError(f"unknown run identity part(s) {sorted(unknown)}; known: {list(IDENTITY_PARTS)}")
    return {k: v if isinstance(v, str) else settings_hash(v) for k, v in parts.items() if v is not None}


def records_digest(records: Sequence[dict]) -> str:
    """The sha256 of training records (their canonical JSON, in order): a run's data, in its settings hash, so
    that a resume on other data is refused rather than continued."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps(r, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def image_names(records: Sequence[dict]) -> list[str]:
    """The image files `records` name (their "image" field, where they have one)."""
    return [r["image"] for r in records if r.get("image")]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The seeded order of n examples in one epoch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()


SCHEDULES = ("constant", "linear")


def lr_schedule(kind: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up over `warmup_steps`, then constant or linear decay to 0 at `total_steps`."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def optimizer_step(accelerator, module, optimizer, scheduler, max_grad_norm: float | None) -> float:
    """Clip the accumulated gradients (when max_grad_norm), step the optimizer and the schedule, clear the
    gradients -> the gradient norm before clipping."""
    norm = accelerator.clip_grad_norm_(module.parameters(), max_grad_norm or math.inf)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def list_checkpoints(out: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first (a `step_N.tmp` left by a kill during a write is not one)."""
    root = Path(out) / "checkpoints"
    found = [p for p in root.glob("step_*") if _CHECKPOINT.fullmatch(p.name)] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def save_checkpoint(out: Path, module, optimizer, scheduler, step: int, identity: dict[str, str], keep: int = 2,
                    extra: dict | None = None) -> None:
    """Write out/checkpoints/step_N (see the module docstring); only the last `keep` checkpoints are kept."""
    final = Path(out) / "checkpoints" / f"step_{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(trainable_state(module), tmp / "trainable.pt")
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_rng = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "numpy": numpy_rng, "python": random.getstate()}},
               tmp / "state.pt")
    io.write_json(tmp / "meta.json", {"step": step, "config_hash": settings_hash(identity), "identity": identity})
    if extra is not None:
        io.write_json(tmp / "extra.json", extra)
    os.replace(tmp, final)
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old)


def load_checkpoint(path: Path, module, optimizer, scheduler, identity: dict[str, str]) -> tuple[int, dict | None]:
    """Restore a checkpoint into `module`, optimizer, scheduler and the RNGs -> (its step, its extra state or None).
    ValueError naming what differs when it was written for another run (`run_identity`)."""
    meta = io.read_json(path / "meta.json")
    if meta.get("config_hash") != settings_hash(identity):
        written = meta.get("identity") if isinstance(meta.get("identity"), dict) else {}
        changed = [k for k in IDENTITY_PARTS if (k in written or k in identity) and written.get(k) != identity.get(k)]
        what = " and ".join(IDENTITY_PARTS[k] for k in changed) if written else "other settings or inputs"
        raise ValueError(f"{path} was written for a run with {what} than this one; use a new --out, or the same "
                         "settings and inputs")
    params = dict(module.named_parameters())
    for name, value in _load_tensors_only(path / "trainable.pt").items():
        params[name].data.copy_(value)
    state = _load_tensors_only(path / "state.pt")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    kind, keys, pos, has_gauss, cached = state["rng"]["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["rng"]["python"])
    extra = io.read_json(path / "extra.json") if (path / "extra.json").is_file() else None
    return int(meta["step"]), extra


def _load_tensors_only(path: Path):
    """`torch.load` that runs no code from the file: tensors, numbers, strings and containers only (a crafted
    checkpoint is refused with an error naming it)."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        raise io.DataError(f"{path}: not a checkpoint mmstudy wrote (it holds more than tensors and plain values: "
                           f"{str(e).splitlines()[0]})") from e




def keep_records_up_to(path: Path, step: int) -> None:
    """Drop the lines of a per-step JSON-lines log written after `step` (a crash after the last checkpoint);
    rewritten atomically, only when something has to go."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = io.parse_json(line, f"{path}, line {i + 1}")
        except io.DataError:
            if i == len(lines) - 1:      # the line being written when the run stopped: after the checkpoint
                logger.warning("%s: dropped its torn last line %d", path, i + 1)
                continue
            raise
        if not isinstance(record, dict) or "step" not in record:
            raise io.DataError(f"{path}, line {i + 1}: a step log record needs a 'step' field")
        if record["step"] <= step:
            kept.append(line)
    if len(kept) != len(lines):
        io.write_text(path, "".join(line + "\n" for line in kept))


def resume_run(out: Path, module, optimizer, scheduler, identity: dict[str, str],
               logs: Sequence[str] = ("metrics.jsonl",)) -> tuple[int, dict | None]:
    """Load the last checkpoint of `out` (refusing one written with other settings) and cut the step logs back to
    it -> (the step to continue from, the checkpoint's extra state). Step 0: a fresh run, its old logs removed."""
    found = list_checkpoints(out)
    step, extra = load_checkpoint(found[-1], module, optimizer, scheduler, identity) if found else (0, None)
    if found:
        logger.info("resuming from %s (step %d)", found[-1], step)
    for name in logs:
        if step == 0:
            (Path(out) / name).unlink(missing_ok=True)
        keep_records_up_to(Path(out) / name, step)
    return step, extra
