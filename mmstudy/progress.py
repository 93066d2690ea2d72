"""Progress bars the run driver can see from outside a notebook's kernel.

Every long loop of the library (training steps, evaluation items, BDHS examples, world images) shows a tqdm bar
made by `progress_bar`. When `$MMSTUDY_PROGRESS` names a file, the bar also writes its state there (atomically, at
most once a second, and when it closes). `mmstudy run` sets that variable for each notebook it executes and `Watcher`
turns the file into one terminal line: which stage and run, which step inside it, how far, and the time left.

    >>> for batch in progress_bar(batches, desc="train"):      # the same call with or without a watcher
    ...     step(batch)
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

from mmstudy import io

ENV = "MMSTUDY_PROGRESS"
PUBLISH_EVERY_S = 1.0


class _Published(tqdm):
    """A tqdm bar that also writes {desc, n, total, elapsed} to the file named by $MMSTUDY_PROGRESS."""

    def __init__(self, *args, **kwargs):
        self._target = os.environ.get(ENV)
        self._published_at = 0.0
        super().__init__(*args, **kwargs)

    def __iter__(self):
        for item in super().__iter__():
            yield item
            self._publish()

    def update(self, n=1):
        shown = super().update(n)
        self._publish()
        return shown

    def close(self):
        if not self.disable:
            self._publish(force=True)
        super().close()

    def _publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.disable or not self._target or (not force and now - self._published_at < PUBLISH_EVERY_S):
            return
        self._published_at = now
        state = self.format_dict
        io.write_json(Path(self._target), {"desc": state.get("prefix") or "", "n": state["n"],
                                           "total": state["total"], "elapsed": state["elapsed"]})


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """A tqdm progress bar (same arguments) that a watching `mmstudy run` mirrors in its terminal."""
    return _Published(iterable, **kwargs)


def status_line(job: str, state: dict | None) -> str:
    """The driver's line for `job` (e.g. "05_offline/povid/s1 (5 of 14)") and the last published bar state:
    `job · desc n/total [elapsed<left]`. Pure."""
    if not state:
        return job
    meter = tqdm.format_meter(state["n"], state["total"], state["elapsed"],
                              bar_format="{n_fmt}/{total_fmt} [{elapsed}<{remaining}]" if state["total"] else
                              "{n_fmt} [{elapsed}]")
    desc = f"{state['desc'].rstrip(': ')} " if state["desc"] else ""
    return f"{job} · {desc}{meter}"


class Watcher:
    """Mirrors the bar state a job's kernel publishes (`path`) on one terminal line while the job runs.

        >>> with Watcher(run_dir / ".progress.json", "05_offline/povid/s1 (5 of 14)"):
        ...     execute(...)                                    # the kernel inherits $MMSTUDY_PROGRESS
    """

    def __init__(self, path: Path, job: str, every_s: float = 1.0):
        self.path, self.job, self.every_s = Path(path), job, every_s
        self._stop = threading.Event()
        self._line = tqdm(total=0, bar_format="{desc}", desc=job, leave=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._previous = os.environ.get(ENV)

    def __enter__(self) -> "Watcher":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        os.environ[ENV] = str(self.path)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._show()
        self._line.close()
        if self._previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self._previous
        self.path.unlink(missing_ok=True)

    def _show(self) -> None:
        state = io.read_json(self.path) if self.path.is_file() else None     # written atomically: whole or absent
        self._line.set_description_str(status_line(self.job, state))

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._show()
