"""Checkpoint plumbing on a toy module: exact round trip, no code run from a checkpoint, half-written checkpoints
and torn log lines on resume."""

import json
import pickle
import random

import numpy as np
import pytest
import torch

from mmstudy import io
from mmstudy.training.checkpoints import (
    keep_records_up_to,
    list_checkpoints,
    load_checkpoint,
    records_digest,
    resume_run,
    run_identity,
    save_checkpoint,
)


def _toy():
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    module(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return module, optimizer, scheduler


def test_a_checkpoint_restores_weights_optimizer_schedule_and_rngs(tmp_path):
    module, optimizer, scheduler = _toy()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    identity = run_identity(config={"lr": 0.1}, data="d1", model="m1")
    save_checkpoint(tmp_path, module, optimizer, scheduler, step=4, identity=identity)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    weights = {n: p.detach().clone() for n, p in module.named_parameters()}
    fresh, fresh_opt, fresh_sched = _toy()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    assert load_checkpoint(list_checkpoints(tmp_path)[-1], fresh, fresh_opt, fresh_sched, identity) == (4, None)
    assert all(torch.equal(p, weights[n]) for n, p in fresh.named_parameters())
    assert fresh_sched.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"]
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    with pytest.raises(ValueError, match="with other training data and another model than this one"):
        load_checkpoint(list_checkpoints(tmp_path)[-1], fresh, fresh_opt, fresh_sched, {**identity, "data": "d2",
                                                                                        "model": "m2"})
    with pytest.raises(ValueError, match="with another training config than"):
        load_checkpoint(list_checkpoints(tmp_path)[-1], fresh, fresh_opt, fresh_sched,
                        run_identity(config={"lr": 0.2}, data="d1", model="m1"))


class _Payload:
    """What a crafted checkpoint could hold: unpickling it would write a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_a_crafted_checkpoint_runs_no_code(tmp_path):
    module, optimizer, scheduler = _toy()
    save_checkpoint(tmp_path, module, optimizer, scheduler, step=1, identity={"config": "h"})
    path = list_checkpoints(tmp_path)[-1]
    marker = tmp_path / "pwned"
    with (path / "state.pt").open("wb") as f:
        pickle.dump({"optimizer": _Payload(marker)}, f)
    torch.save({"weight": _Payload(marker)}, path / "trainable.pt")
    with pytest.raises(io.DataError, match="not a checkpoint mmstudy wrote"):
        load_checkpoint(path, module, optimizer, scheduler, {"config": "h"})
    assert not marker.exists()


def test_a_half_written_checkpoint_is_not_resumed_from(tmp_path):
    module, optimizer, scheduler = _toy()
    save_checkpoint(tmp_path, module, optimizer, scheduler, step=2, identity={"config": "h"})
    (tmp_path / "checkpoints" / "step_0000003.tmp").mkdir()          # a kill during the next write
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000002"]
    io.write_text(tmp_path / "metrics.jsonl", "".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)) + '{"st')
    assert resume_run(tmp_path, module, optimizer, scheduler, {"config": "h"}) == (2, None)
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_malformed_line_before_the_last_names_the_file(tmp_path):
    log = tmp_path / "metrics.jsonl"
    io.write_text(log, '{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(io.DataError, match=r"metrics.jsonl, line 2: malformed JSON"):
        keep_records_up_to(log, 2)


def test_records_digest_sees_order_and_content():
    a, b = {"id": 1, "chosen": "x"}, {"id": 2, "chosen": "y"}
    assert records_digest([a, b]) == records_digest([dict(a), dict(b)])
    assert len({records_digest([a, b]), records_digest([b, a]), records_digest([a, {**b, "chosen": "z"}])}) == 3
