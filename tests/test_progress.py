"""Progress a driver can see: bars publish their state when asked to, and the watcher turns a kernel's published
state into the driver's line."""

import os

import nbformat

from mmstudy import io, progress
from mmstudy.progress import ENV, Watcher, progress_bar, status_line
from mmstudy.study.notebooks import execute


def test_bars_publish_only_when_a_file_is_named(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    monkeypatch.delenv(ENV, raising=False)
    assert list(progress_bar(range(3), desc="quiet")) == [0, 1, 2]
    assert not target.exists()
    monkeypatch.setenv(ENV, str(target))
    assert list(progress_bar(range(3), desc="hidden", disable=True)) == [0, 1, 2]      # a disabled bar: silent
    with progress_bar(total=3, disable=True) as hidden:
        hidden.update(2)
    assert not target.exists()
    assert list(progress_bar(range(4), desc="loop")) == [0, 1, 2, 3]
    assert {k: io.read_json(target)[k] for k in ("desc", "n", "total")} == {"desc": "loop", "n": 4, "total": 4}
    with progress_bar(total=10, desc="DPO") as bar:
        bar.update(2)
        assert io.read_json(target)["n"] == 2            # the first update publishes at once
        bar.update(5)
    assert {k: io.read_json(target)[k] for k in ("desc", "n", "total")} == {"desc": "DPO", "n": 7, "total": 10}


def test_status_line_reads_like_a_bar():
    assert status_line("05_offline/povid/s1 (5 of 14)", None) == "05_offline/povid/s1 (5 of 14)"
    line = status_line("job", {"desc": "DPO", "n": 50, "total": 100, "elapsed": 10.0})
    assert line == "job · DPO 50/100 [00:10<00:10]"
    assert status_line("job", {"desc": "", "n": 7, "total": None, "elapsed": 3.0}) == "job · 7 [00:03]"


def test_the_watcher_mirrors_a_notebook_kernel(tmp_path, monkeypatch):
    """The kernel papermill starts inherits the watcher's file, so the driver's line shows the kernel's bar."""
    monkeypatch.setattr(progress, "PUBLISH_EVERY_S", 0.0)
    monkeypatch.delenv(ENV, raising=False)
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                         "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("run_dir = '.'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("from pathlib import Path\nfrom mmstudy import io\n"
                                          "from mmstudy.progress import progress_bar\n"
                                          "n = sum(1 for _ in progress_bar(range(6), desc='items'))\n"
                                          "io.write_json(Path(run_dir) / 'metrics.json', {'n': n})")]
    notebook = tmp_path / "tiny.ipynb"
    nbformat.write(nb, notebook)
    run = tmp_path / "run"
    with Watcher(run / ".progress.json", "tiny (1 of 1)", every_s=0.05) as watcher:
        assert execute(notebook, {}, run, progress=False) == {"n": 6}
    assert watcher._line.desc.startswith("tiny (1 of 1) · items 6/6 [")
    assert not (run / ".progress.json").exists() and ENV not in os.environ
