"""The archive of a study's results: what it keeps, what it leaves out, that JSON lines come back from their
gzipped form, and that it never rewrites or nests."""

import gzip
from pathlib import Path

import pytest

from mmstudy import io
from mmstudy.study.archive import archive_runs, archived_files


def _tree(root: Path) -> None:
    files = {
        "pipeline.json": "{}",                                   # not inside a run directory
        "01_world_base/complete.json": "{}", "01_world_base/metrics.json": "{}",
        "01_world_base/params.yaml": "seed: 0\n", "01_world_base/01_world_base.ipynb": "{}",
        "01_world_base/world/images/0.png": "png", "01_world_base/world/world.json": "{}",
        "01_world_base/model/model.safetensors": "w", "01_world_base/model/config.json": "{}",
        "01_world_base/eval/samples.jsonl": "{}\n", "01_world_base/eval/figure.png": "png",
        "05_offline/povid/s0/complete.json": "{}", "05_offline/povid/s0/metrics.jsonl": "{}\n",
        "05_offline/povid/s0/checkpoints/step_0000010/state.pt": "s",
        "05_offline/povid/s0/.progress.json": "{}",
        "05_offline/povid/s0/rm_run/rm/adapter_config.json": "{}",
        "05_offline/povid/s0/rm_run/train_summary.json": "{}",
        "05_offline/bdhs/s0/metrics.json": "{}",                 # interrupted: no complete.json
        "07_ablations/data/s0/bdhs_rho0.jsonl": "{}\n",          # shared data, not a run directory
        "07_ablations/data/s0/bdhs_rho0.stats.json": "{}",       # ... but its statistics are kept
        "outer/complete.json": "{}", "outer/inner/complete.json": "{}", "outer/inner/metrics.json": "{}",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_archive_keeps_the_small_files_of_complete_runs_only(tmp_path):
    _tree(tmp_path / "runs")
    kept = {p.as_posix() for p in archived_files(tmp_path / "runs")}
    assert kept == {
        "01_world_base/complete.json", "01_world_base/metrics.json", "01_world_base/params.yaml",
        "01_world_base/eval/samples.jsonl",
        "05_offline/povid/s0/complete.json", "05_offline/povid/s0/metrics.jsonl",
        "05_offline/povid/s0/rm_run/train_summary.json",
        "outer/complete.json", "outer/inner/complete.json", "outer/inner/metrics.json",
        "07_ablations/data/s0/bdhs_rho0.stats.json"}


def test_archive_copies_once_keeps_the_layout_and_gzips_json_lines(tmp_path):
    _tree(tmp_path / "runs")
    (tmp_path / "runs" / "01_world_base" / "eval" / "samples.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
    written = archive_runs(tmp_path / "runs", tmp_path / "results")
    assert len(written) == 11 and Path("01_world_base/eval/samples.jsonl.gz") in written
    packed = tmp_path / "results" / "01_world_base" / "eval" / "samples.jsonl"
    assert not packed.exists() and io.stored(packed) == packed.with_name("samples.jsonl.gz")
    assert io.read_jsonl(packed) == [{"a": 1}, {"a": 2}]                    # read through its gzipped form
    assert archive_runs(tmp_path / "runs", tmp_path / "results") == []       # nothing changed: nothing written
    (tmp_path / "runs" / "01_world_base" / "metrics.json").write_text('{"a": 1}')
    assert archive_runs(tmp_path / "runs", tmp_path / "results") == [Path("01_world_base/metrics.json")]
    assert io.read_json(tmp_path / "results" / "01_world_base" / "metrics.json") == {"a": 1}


def test_a_corrupt_gzipped_json_lines_file_is_a_data_error(tmp_path):
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n')[:-6])
    with pytest.raises(io.DataError, match="x.jsonl.gz: not a readable gzip file"):
        io.read_jsonl(tmp_path / "x.jsonl")
    assert io.stored(tmp_path / "y.jsonl") is None


def test_archive_refuses_an_empty_root_and_a_destination_inside_it(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(io.DataError, match="no complete run directories"):
        archived_files(tmp_path / "runs")
    _tree(tmp_path / "runs")
    with pytest.raises(ValueError, match="lies inside the runs directory"):
        archive_runs(tmp_path / "runs", tmp_path / "runs" / "results")
