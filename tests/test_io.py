"""Atomic outputs: files and folders appear whole or not at all, the old one stands until the swap, and both get
the permissions the umask gives a normal file or folder."""

import os

import pytest

from mmstudy import io


def test_written_files_get_the_umask_permissions_not_the_temp_files(tmp_path):
    io.write_json(tmp_path / "a" / "r.json", {"x": 1})
    assert (tmp_path / "a" / "r.json").stat().st_mode & 0o777 == io.default_mode()
    assert io.default_mode() == 0o666 & ~io._UMASK and io.default_mode(directory=True) == 0o777 & ~io._UMASK
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["r.json"]


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("killed")
    assert sorted(os.listdir(tmp_path)) == ["out"] and (out / "old.txt").read_text() == "old"
    with io.atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("whole")
        assert (out / "old.txt").is_file()                  # still there while the new one is written
    assert sorted(os.listdir(out)) == ["new.txt"] and sorted(os.listdir(tmp_path)) == ["out"]
    assert out.stat().st_mode & 0o777 == io.default_mode(directory=True)


def test_json_outputs_are_strict_undefined_numbers_become_null(tmp_path):
    """NaN and infinities (an undefined metric) are written as null: any strict JSON reader parses the files."""
    import json
    import math

    import numpy as np

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    record = {"a": math.nan, "b": [1.5, -math.inf, {"c": np.float64("nan")}], "d": (math.inf,), "e": "NaN"}
    want = {"a": None, "b": [1.5, None, {"c": None}], "d": [None], "e": "NaN"}
    io.write_json(tmp_path / "m.json", record)
    assert strict((tmp_path / "m.json").read_text()) == want == io.read_json(tmp_path / "m.json")
    io.write_jsonl(tmp_path / "s.jsonl", [record])
    io.append_jsonl(tmp_path / "s.jsonl", [record, {"x": 1}])
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    assert [strict(line) for line in lines] == [want, want, {"x": 1}]
