"""What the inspector (`mmstudy.app.ui`) shows, as plain functions: finding runs, path safety, ground truth, samples.

Everything here takes explicit inputs and returns plain data and imports no Gradio, so each piece is unit-tested
alone; drawing is `mmstudy.app.render`'s. Scores and checks come from the modules that own them
(`oracle.check_answer`, `chair.extract_objects`, `compare.compare_runs`, `bdhs.bdhs_statistics`); this module only
arranges them for display.

    >>> index = discover_runs("runs", world_dir="world")
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from mmstudy import io
from mmstudy.app.render import ABSENT, PRESENT, UNCHECKED, spans
from mmstudy.benchmarks import chair as chair_lib
from mmstudy.benchmarks.registry import REGISTRY
from mmstudy.data.preferences import load_preferences
from mmstudy.evaluation.compare import ITEM_VALUES
from mmstudy.evaluation.runners import coco_ground_truth
from mmstudy.judges.oracle import check_answer, world_synonyms
from mmstudy.models.llava import LLAVA_CLASSES
from mmstudy.training.online import world_scenes
from mmstudy.world.layout import load_world_info
from mmstudy.world.scene import POSITIONS, Scene

logger = logging.getLogger(__name__)

MODEL_WEIGHTS = "*.safetensors"
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_POSITION = re.compile(r"\b(" + "|".join(sorted(POSITIONS, key=len, reverse=True)) + r")\b")


# ---------------------------------------------------------------- path safety


class PathRefused(io.DataError):
    """A path that would leave the directories the inspector may read."""


def resolve_under(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """`root / relative` with symlinks resolved; PathRefused when that leaves `root` ("..", an absolute path, a
    symlink pointing out) or is no usable path (a NUL byte)."""
    root = Path(root).resolve()
    try:
        path = (root / relative).resolve()
    except (OSError, ValueError) as e:
        raise PathRefused(f"{relative!r}: not a usable path ({e})") from e
    if not path.is_relative_to(root):
        raise PathRefused(f"{relative}: outside {root}; the inspector reads only the runs directory and the "
                          "world's images")
    return path


def find_image(name: str, bases: Sequence[Path], allowed: Sequence[Path]) -> Path:
    """The first `base / name` that is a file inside one of the `allowed` roots. PathRefused when a candidate
    leaves every allowed root (and none inside holds the file); DataError when the file is nowhere."""
    refused = None
    for base in bases:
        try:
            path = (Path(base) / name).resolve()
        except (OSError, ValueError) as e:
            raise PathRefused(f"image {name!r}: not a usable path ({e})") from e
        if not any(path.is_relative_to(Path(a).resolve()) for a in allowed):
            refused = path
            continue
        if path.is_file():
            return path
    if refused is not None:
        raise PathRefused(f"image {name!r} resolves to {refused}, outside the runs directory and the world's "
                          "images: refused")
    raise io.DataError(f"image {name!r} not found under {', '.join(str(b) for b in bases) or 'any image root'}")


# ---------------------------------------------------------------- discovery


@dataclass
class RunIndex:
    """What a runs directory holds, as paths relative to it, and what could not be used (path, message)."""

    root: Path
    world: Path | None = None
    preferences: list[str] = field(default_factory=list)
    evals: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    rl_runs: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def allowed_roots(self) -> list[Path]:
        """Where files may be read from: the runs directory and the world's images."""
        return [self.root] + ([self.world / "images"] if self.world is not None else [])

    def summary_markdown(self) -> str:
        world = f"`{self.world}`" if self.world else "none (no ground truth; give --world)"
        lines = [f"**Runs directory** `{self.root}`: {len(self.preferences)} preference file(s), {len(self.evals)} "
                 f"evaluation(s), {len(self.models)} model(s), {len(self.rl_runs)} RL run(s); world: {world}."]
        if self.problems:
            lines.append(f"\n**{len(self.problems)} problem(s) found** (these are left out):")
            lines += [f"- `{path}`: {message}" for path, message in self.problems]
        return "\n".join(lines)


def _peek_jsonl(path: Path) -> dict | None:
    """The first record of a JSON-lines file, or None when the first non-blank line is not a JSON object."""
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):     # malformed, too deep, or integers past the limit
                    return None
                return record if isinstance(record, dict) else None
    return None


def _looks_like_pairs(path: Path) -> bool:
    """Whether a file is meant as preference pairs (its first record or its columns name chosen and rejected)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            names = set(pq.read_schema(path).names)
        except (OSError, ValueError) as e:   # pyarrow's errors derive from these
            raise io.DataError(f"not a readable Parquet file: {e}") from e
    else:
        names = set(_peek_jsonl(path) or {})
    return {"chosen", "rejected"} <= names


RL_SAMPLE_FIELDS = ("step", "id", "sample", "response")   # a line of an RL trainer's samples.jsonl


def _looks_like_rl_samples(path: Path) -> bool:
    """Whether a samples.jsonl is an RL trainer's (RLOO, GRPO: every sampled response per step), not a
    benchmark's."""
    first = _peek_jsonl(path) or {}
    return set(RL_SAMPLE_FIELDS) <= set(first) and "benchmark" not in first


@functools.lru_cache(maxsize=8)
def _load_rl_cached(path: str, mtime_ns: int, size: int) -> tuple[dict, ...]:
    records = io.read_jsonl(path, required=RL_SAMPLE_FIELDS)
    for n, r in enumerate(records, start=1):
        if not isinstance(r["step"], int) or not isinstance(r["response"], str):
            raise io.DataError(f"{path}, record {n}: 'step' must be an integer and 'response' a string")
    return tuple(records)


RL_METRICS = ("rewards/raw_mean", "rewards/mean", "kl", "response/length")   # a run without rl_curve.jsonl


def rl_step_samples(samples: Sequence[dict], step: float) -> tuple[int, list[dict]]:
    """(the logged step nearest `step`, its samples): steps are logged every `log_samples_every`."""
    steps = sorted({s["step"] for s in samples})
    if not steps:
        raise io.DataError("the run logged no samples")
    want = int(step or 0)
    nearest = min(steps, key=lambda s: (abs(s - want), s))
    return nearest, [s for s in samples if s["step"] == nearest]


def sample_hallucinated(sample: dict, truth: "Truth") -> bool | None:
    """Whether the oracle finds a false claim in an RL sample's response (None without the image's scene)."""
    scene = truth.scene(sample["image"]) if sample.get("image") else None
    return None if scene is None else bool(check_answer(sample["response"], scene).hallucinations)


def rounded(value, digits: int = 3):
    return round(value, digits) if isinstance(value, (int, float)) else value


def collapse_text(flags: dict) -> str:
    """One line of a run's collapse.json (`mmstudy.training.rl_curves.collapse_flags`)."""
    verdict = "**collapsed**" if flags.get("collapsed") else "not collapsed"
    why = [name for name in ("reward_hacking", "degenerate") if flags.get(name)]
    rates = ", ".join(f"{key} {flags[f'{key}/first']:.3f} → {flags[f'{key}/last']:.3f}"
                      for key in ("reward", "oracle/hallucination_rate", "oracle/recall")
                      if flags.get(f"{key}/first") is not None and flags.get(f"{key}/last") is not None)
    return f"{verdict}{' (' + ', '.join(why) + ')' if why else ''}; first → last quarter: {rates}"


def load_rl_samples(directory: Path) -> list[dict]:
    """The records of an RL run's samples.jsonl (`RL_SAMPLE_FIELDS` checked), cached until the file changes."""
    path = directory / "samples.jsonl"
    st = path.stat()
    return list(_load_rl_cached(str(path), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=16)
def _load_pairs_cached(path: str, mtime_ns: int, size: int) -> tuple[dict, ...]:
    return tuple(load_preferences(path))


def load_pairs(path: Path) -> list[dict]:
    """`preferences.load_preferences`, cached until the file changes."""
    st = path.stat()
    return list(_load_pairs_cached(str(path), st.st_mtime_ns, st.st_size))


def _read_metrics(directory: Path) -> dict:
    results = io.read_json(directory / "results.json")
    if not isinstance(results, dict) or not isinstance(results.get("metrics"), dict):
        raise io.DataError(f"{directory / 'results.json'}: no 'metrics' object (not written by mmstudy eval?)")
    return results["metrics"]


@functools.lru_cache(maxsize=16)
def _load_eval_cached(directory: str, stamp: tuple) -> tuple[dict | None, tuple[dict, ...]]:
    directory = Path(directory)
    metrics = _read_metrics(directory) if (directory / "results.json").is_file() else None
    return metrics, tuple(io.read_jsonl(directory / "samples.jsonl", required=("benchmark",)))


def load_eval(directory: Path) -> tuple[dict | None, list[dict]]:
    """(metrics of results.json or None, the records of samples.jsonl), cached until either file changes."""
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None
                  for p in (directory / "results.json", directory / "samples.jsonl"))
    metrics, samples = _load_eval_cached(str(directory), stamp)
    return metrics, list(samples)


def _check_model_dir(directory: Path) -> str | None:
    """None for a usable LLaVA safetensors directory, else why not; "" for a config.json of something else."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        return f"unreadable config.json: {e}"
    if not isinstance(config, dict) or config.get("model_type") not in LLAVA_CLASSES:
        return ""
    if any(directory.glob(MODEL_WEIGHTS)):
        return None
    if any(p for pattern in PICKLE_WEIGHTS for p in directory.glob(pattern)):
        return "weights only as pickles (.bin/.pt); the inspector loads safetensors only"
    return "a LLaVA config.json but no *.safetensors weights"


def _check_eval_dir(directory: Path, names: set[str]) -> str | None:
    """None for an evaluation directory the inspector can show, else why not."""
    try:
        if "results.json" in names:
            _read_metrics(directory)
        if "samples.jsonl" not in names:
            return "results.json without samples.jsonl beside it"
        load_eval(directory)
    except (io.DataError, UnicodeDecodeError) as e:
        return str(e)
    return None


def _scan_dir(index: RunIndex, directory: Path, names: set[str]) -> None:
    rel = str(directory.relative_to(index.root)) if directory != index.root else "."
    if "config.json" in names:
        why = _check_model_dir(directory)
        if why is None:
            index.models.append(rel)
        elif why:
            index.problems.append((rel, why))
    is_eval = "results.json" in names or ("samples.jsonl" in names
                                          and "benchmark" in (_peek_jsonl(directory / "samples.jsonl") or {}))
    if is_eval:
        why = _check_eval_dir(directory, names)
        if why:
            index.problems.append((rel, why))
        else:
            index.evals.append(rel)
    rl_samples = directory / "samples.jsonl"
    if not is_eval and "samples.jsonl" in names and rl_samples.resolve().is_relative_to(index.root) \
            and _looks_like_rl_samples(rl_samples):
        try:
            load_rl_samples(directory)
            index.rl_runs.append(rel)
        except (io.DataError, OSError, UnicodeDecodeError) as e:
            index.problems.append((f"{rel}/samples.jsonl", str(e)))
    if {"dataset_info.json", "state.json"} <= names:      # a Hugging Face `datasets` Arrow folder
        try:
            features = io.read_json(directory / "dataset_info.json").get("features") or {}
            if {"chosen", "rejected"} <= set(features):
                load_pairs(directory)
                index.preferences.append(rel)
        except (io.DataError, OSError) as e:
            index.problems.append((rel, str(e)))
    for name in sorted(names):
        if Path(name).suffix not in (".jsonl", ".parquet") or (name == "samples.jsonl" and (
                is_eval or rel in index.rl_runs)):
            continue
        path = directory / name
        relpath = str(path.relative_to(index.root))
        try:
            if path.resolve() != path.absolute() and not path.resolve().is_relative_to(index.root):
                index.problems.append((relpath, "a symlink out of the runs directory: ignored"))
                continue
            if _looks_like_pairs(path):
                load_pairs(path)
                index.preferences.append(relpath)
        except (io.DataError, OSError, UnicodeDecodeError) as e:
            index.problems.append((relpath, str(e)))


def discover_runs(runs_dir: str | os.PathLike, world_dir: str | os.PathLike | None = None) -> RunIndex:
    """Walk `runs_dir` (symlinked directories and hidden entries are not followed) for preference files (*.jsonl /
    *.parquet / Arrow folders whose records are pairs and validate), evaluation directories (results.json +
    samples.jsonl), LLaVA model directories (config.json + *.safetensors) and a world (world.json; `world_dir`
    takes precedence).
    Nothing raises: a missing directory or a broken run becomes an entry of `problems`."""
    root = Path(runs_dir).resolve()
    index = RunIndex(root)
    if world_dir is not None:
        why = _check_world(Path(world_dir))
        if why:
            index.problems.append((str(world_dir), f"--world: {why}"))
        else:
            index.world = Path(world_dir).resolve()
    if not root.is_dir():
        index.problems.append((str(runs_dir), "the runs directory does not exist or is not a directory"))
        return index
    worlds = []

    def on_error(e: OSError) -> None:
        index.problems.append((str(e.filename), f"cannot be read: {e.strerror}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        directory = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if "world.json" in filenames:   # a world holds images and benchmark files, never runs
            worlds.append(directory)
            dirnames[:] = []
            continue
        try:
            _scan_dir(index, directory, {f for f in filenames if not f.startswith(".")})
        except OSError as e:   # unreadable files: the directory is reported, the walk goes on
            index.problems.append((str(directory.relative_to(root)), f"cannot be read: {e}"))
    for world in worlds:
        rel, why = str(world.relative_to(root)), _check_world(world)
        if why:
            index.problems.append((rel, why))
        elif index.world is None:
            index.world = world
        elif index.world != world:
            index.problems.append((rel, f"another world; using {index.world}"))
    return index


def _check_world(world: Path) -> str | None:
    """None for a world directory the inspector can use (world.json, scenes.jsonl, images/), else why not."""
    if not (world / "world.json").is_file():
        return "no world.json there, so no ground truth"
    try:
        load_world_info(world)
    except io.DataError as e:
        return str(e)
    missing = [name for name in ("scenes.jsonl", "images") if not (world / name).exists()]
    return f"a world without {' and '.join(missing)}" if missing else None


# ---------------------------------------------------------------- ground truth


class Truth:
    """Ground truth of images by file name: world scenes (objects, cells, boxes) with `world_dir`, else the classes
    of COCO annotations (instances + reference captions) with `coco_dir`, else none. Objects in text are read with
    the world's synonyms, else CHAIR's COCO synonym list."""

    def __init__(self, world_dir: Path | None = None, coco_dir: Path | None = None):
        self.world_dir, self.coco_dir = world_dir, coco_dir
        self._scenes: Callable[[str], Scene | None] | None = None
        self._coco: dict[str, set[str]] | None = None
        self.synonyms = world_synonyms() if world_dir else chair_lib.load_synonyms(chair_lib.COCO_SYNONYMS_PATH)

    def scene(self, image: str) -> Scene | None:
        if self.world_dir is None:
            return None
        if self._scenes is None:
            self._scenes = world_scenes(self.world_dir)
        return self._scenes(Path(image).name)

    def classes(self, image: str) -> set[str] | None:
        """Classes present in the image, or None when there is no ground truth for it."""
        scene = self.scene(image)
        if scene is not None:
            return set(scene.classes())
        if self.coco_dir is None:
            return None
        if self._coco is None:
            self._coco = coco_classes(self.coco_dir, self.synonyms)
        return self._coco.get(Path(image).name)

    @property
    def kind(self) -> str:
        return "world" if self.world_dir else "COCO annotations" if self.coco_dir else "none"


def coco_classes(coco_dir: Path, synonyms) -> dict[str, set[str]]:
    """CHAIR's ground truth (`evaluate.coco_ground_truth`) keyed by image file name instead of id."""
    by_id = coco_ground_truth(coco_dir, synonyms)
    names = {}
    for path in sorted(Path(coco_dir).glob("instances_*.json")):
        names.update({im["id"]: im["file_name"] for im in io.read_json(path).get("images", [])})
    return {names[i]: classes for i, classes in by_id.items() if i in names}


def object_mentions(text: str, truth: Truth, present: set[str] | None) -> list[tuple[str, str, str]]:
    """(word, class, status) for each distinct object the text names; status is PRESENT or ABSENT against
    `present`, UNCHECKED without ground truth. Negated mentions ("there is no cat") count as mentions here; the
    oracle's claims (`oracle.check_answer`) tell them apart."""
    seen, rows = set(), []
    for word, cls in chair_lib.extract_objects(text, truth.synonyms):
        if cls not in seen:
            seen.add(cls)
            rows.append((word, cls, UNCHECKED if present is None else PRESENT if cls in present else ABSENT))
    return rows


class AnswerView:
    """One text read against the ground truth: its objects (`object_mentions`) and how to show them."""

    def __init__(self, text: str, truth: Truth, present: set[str] | None):
        self.text, self.rows = text, object_mentions(text, truth, present)
        self.status = {cls: status for _, cls, status in self.rows}
        self.named = set(self.status)
        self.absent = {cls for cls, status in self.status.items() if status == ABSENT}
        self._synonyms = truth.synonyms

    def spans(self, synonyms=None) -> list[tuple[str, str | None]]:
        return spans(self.text, None, self.status, synonyms or self._synonyms)

    def claimed_cells(self, synonyms=None) -> dict[str, int | None]:
        return claimed_cells(self.text, self.absent, synonyms or self._synonyms)

    def marks(self) -> str:
        """"chair ✓; cat ✗; dog ?": each named object and whether it is in the image."""
        mark = {PRESENT: "✓", ABSENT: "✗", UNCHECKED: "?"}
        return "; ".join(f"{cls} {mark[status]}" for _, cls, status in self.rows) or "none"


def claimed_cells(text: str, classes: set[str], synonyms) -> dict[str, int | None]:
    """For each of `classes` the text names: the grid cell (0..8) its sentence puts it in, when that sentence
    names exactly one position, else None. Used to draw where a hallucinated object was claimed."""
    cells: dict[str, int | None] = {}
    for sentence in _SENTENCE.split(text):
        named = {cls for _, cls in chair_lib.extract_objects(sentence, synonyms)} & classes
        positions = _POSITION.findall(sentence.lower())
        for cls in named:
            if cells.get(cls) is None:
                cells[cls] = POSITIONS.index(positions[0]) if len(positions) == 1 else None
    return cells


# ---------------------------------------------------------------- evaluation samples


def sample_question(sample: dict) -> str:
    return str(sample.get("question") or sample.get("prompt") or sample.get("query") or "")


def sample_answer(sample: dict) -> str:
    return str(sample.get("answer", sample.get("response", "")))


def sample_key(sample: dict, position: int):
    """The item identity `compare.compare_runs` pairs on (the position in the file where it pairs none)."""
    values = ITEM_VALUES.get(sample["benchmark"])
    if values is not None:
        try:
            keys = list(values([sample]))
        except (KeyError, TypeError):
            keys = []
        if keys:
            return keys[0]
    return sample.get("question_id", sample.get("image_id", position))


def is_hallucinated(sample: dict) -> bool | None:
    """Whether the sample's own scored fields mark a hallucination (None where the benchmark has no such mark):
    POPE a "yes" to an absent object; CHAIR / Object HalBench a hallucinated object (CHAIR's reference scoring);
    AMBER its hallucination flag or a wrong yes/no; MMHal a rating below 3 (its hallucination rate)."""
    bench = sample["benchmark"]
    if bench == "pope":
        return sample.get("pred") == "yes" and sample.get("label") == "no"
    if bench == "chair":
        return bool(sample.get("reference", {}).get("hallucinated"))
    if bench == "objhal":
        return None if sample.get("extraction_failed") else bool(sample.get("hallucinated"))
    if bench == "amber":
        return bool(sample["has_hallucination"]) if "has_hallucination" in sample else not sample.get("correct")
    if bench in ("mmhal", "mmhal_v"):
        return None if sample.get("rating") is None else sample["rating"] < 3
    return None


def sample_details(sample: dict) -> str:
    """The scored fields of one sample and the judge's rationale, as Markdown."""
    lines = []
    if "label" in sample:
        lines.append(f"**label** {sample['label']} · **parsed answer** {sample.get('pred')}")
    for mode in ("reference", "fixed"):
        d = sample.get(mode)
        if isinstance(d, dict) and "mentioned" in d:
            lines.append(f"**CHAIR ({mode})** mentioned: {_objs(d['mentioned'])}; hallucinated: "
                         f"{_objs(d['hallucinated'])}; ground truth: {', '.join(d.get('gt', [])) or '-'}")
    for name in ("rating", "scores", "correct", "has_hallucination"):
        if name in sample:
            lines.append(f"**{name}** {sample[name]}")
    judge = sample.get("judge_text") or sample.get("review")
    if judge:
        lines.append("**judge's rationale**\n\n" + "  \n".join(f"> {line}" for line in str(judge).splitlines()))
    if sample.get("judge_error"):
        lines.append(f"**judge error** {sample['judge_error']}")
    flag = is_hallucinated(sample)
    lines.append("**hallucinated** " + ("-" if flag is None else "yes" if flag else "no"))
    return "\n\n".join(lines)


def _objs(pairs) -> str:
    return ", ".join(p[1] if isinstance(p, (list, tuple)) else str(p) for p in pairs) or "-"


FILTERS = {"all items": lambda a, b: True,
           "hallucinated by A, not by B": lambda a, b: bool(a) and b is False,
           "hallucinated by B, not by A": lambda a, b: bool(b) and a is False,
           "hallucinated by both": lambda a, b: bool(a) and bool(b),
           "hallucinated by neither": lambda a, b: a is False and b is False}


def paired_items(samples_a: list[dict], samples_b: list[dict], benchmark: str) -> list[tuple[dict, dict]]:
    """The items of `benchmark` both runs answered, paired by item identity, in A's order."""
    def keyed(samples):
        rows = [s for s in samples if s["benchmark"] == benchmark]
        return {sample_key(s, i): s for i, s in enumerate(rows)}

    a, b = keyed(samples_a), keyed(samples_b)
    return [(a[k], b[k]) for k in a if k in b]


def filter_pairs(pairs: list[tuple[dict, dict]], mode: str) -> list[tuple[dict, dict]]:
    keep = FILTERS[mode]
    return [(a, b) for a, b in pairs if keep(is_hallucinated(a), is_hallucinated(b))]


def delta_rows(result: dict, benchmark: str) -> list[list]:
    """`compare.compare_runs` rows of one benchmark: metric, A, B, B - A, 95 % interval, n."""
    return [[key.split("/", 1)[1], round(r["a"], 4), round(r["b"], 4), round(r["diff"], 4),
             f"[{r['low']:+.4f}, {r['high']:+.4f}]", r["n"]]
            for key, r in result.items() if key.startswith(f"{benchmark}/")]


def benchmark_order(names) -> list[str]:
    """Benchmark names in the registry's order (POPE first), unknown ones after, alphabetically."""
    known = list(REGISTRY)
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), n))


def headline_metrics(metrics: dict, benchmark: str) -> list[str]:
    """The registry's headline metrics of `benchmark` that `metrics` holds (else its other plain metrics)."""
    spec = REGISTRY.get(benchmark)
    keys = [k for k in (spec.headline if spec else ()) if isinstance(metrics.get(k), (int, float))]
    if keys:
        return keys
    return [k for k, v in metrics.items() if k.startswith(f"{benchmark}/") and isinstance(v, (int, float))
            and not isinstance(v, bool) and "_ci95_" not in k and not k.endswith("/version")][:8]
