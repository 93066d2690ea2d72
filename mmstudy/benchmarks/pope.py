"""POPE: Polling-based Object Probing Evaluation (Li et al., EMNLP 2023; github.com/AoiDragon/POPE).

Yes/no questions "Is there a {object} in the image?" built from ground-truth object lists, in three splits that
differ only in how the negative objects are drawn (random, popular, adversarial), scored as a binary
classification with "yes" as the positive class. This module holds the construction procedure, the answer
parsers and the metrics, all pure functions; callers read and write files (`mmstudy.io.write_jsonl`).

Protocol followed (see docs/benchmarks.md):
    * parsing: the reference / LLaVA `eval_pope.py` rule (`parse_yes_no`) by default; `parse_yes_no_strict` is
      the named fixed alternative, under which unparseable answers count as errors instead of "yes";
    * metrics: accuracy, precision, recall, F1 with positive class "yes", plus the *prediction* yes-ratio
      (share of answers parsed as "yes", as in LLaVA) and, separately, the label yes-ratio (what lmms-eval
      calls yes-ratio);
    * reporting: per split, and `macro_average` over splits (the mean F1 is what LLaVA reports).

    >>> splits = build_pope_questions(image_objects, img_num=500, seed=0); score_pope(answers, splits["random"])
"""

from __future__ import annotations

import logging
import random
import re
import string
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping, Sequence

from mmstudy.io import DataError, read_jsonl

logger = logging.getLogger(__name__)

POPE_VERSION = 1  # bump whenever parsing, metrics or construction change
SPLITS = ("random", "popular", "adversarial")  # in the reference's construction order (they share one RNG)
LABELS = ("yes", "no")
QUESTION_FIELDS = ("question_id", "image", "text", "label")
MACRO_KEYS = ("accuracy", "f1", "precision", "recall", "yes_ratio")
_NO_WORDS = frozenset({"No", "no", "not"})
_VOWELS = ("a", "e", "i", "o", "u")


# ---------------------------------------------------------------- answer parsing


def parse_yes_no(text: str) -> str:
    """The reference / LLaVA parser: "no" if the first sentence holds the token No, no or not, else "yes".

    Exactly as AoiDragon/POPE `evaluate.py` and LLaVA `llava/eval/eval_pope.py`: keep the text before the first
    ".", delete every ",", split on single spaces (not on any whitespace), and answer "no" iff a token equals
    "No", "no" or "not". Anything else, including "" and "NO", counts as "yes" (a known bias of this rule).
    """
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if _NO_WORDS.intersection(words) else "yes"


def parse_yes_no_strict(text: str) -> str | None:
    """The fixed parser: the first word, lower-cased and stripped of punctuation, if it is yes/no; else None."""
    words = text.split()
    if not words:
        return None
    first = words[0].strip(string.punctuation).lower()
    return first if first in LABELS else None


PARSERS: dict[str, Callable[[str], str | None]] = {"reference": parse_yes_no, "strict": parse_yes_no_strict}


# ---------------------------------------------------------------- metrics


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _check_labels(labels: Sequence[str]) -> None:
    for i, label in enumerate(labels):
        if label not in LABELS:
            raise ValueError(f"POPE label {i} is {label!r}; expected 'yes' or 'no'")


def _check_preds(preds: Sequence[str | None]) -> None:
    for i, pred in enumerate(preds):
        if pred is not None and pred not in LABELS:
            raise ValueError(f"POPE prediction {i} is {pred!r}; expected 'yes', 'no' or None (unparsed)")


def pope_metrics(preds: Sequence[str | None], labels: Sequence[str]) -> dict:
    """Binary metrics over one split, positive class "yes" (AoiDragon/POPE `evaluate.py`).

    preds: "yes" / "no" per question, or None for an answer the strict parser could not read.
    labels: "yes" / "no" per question, same length.

    accuracy = (TP + TN) / n; precision = TP / (TP + FP); recall = TP / #labels "yes" (= TP / (TP + FN) when
    every answer parsed); f1 = 2PR / (P + R); yes_ratio = #preds "yes" / n (the TRUE share of "yes" answers);
    label_yes_ratio = #labels "yes" / n. An unparsed answer is never TP, FP, TN or FN: it lowers accuracy, and
    recall when its label is "yes"; `n_invalid` counts them. Undefined ratios (empty input, no "yes"
    prediction, no "yes" label, P + R = 0) are 0.0 rather than an error, so n = 0 gives all zeros.
    """
    if len(preds) != len(labels):
        raise ValueError(f"POPE: {len(preds)} predictions but {len(labels)} labels")
    _check_labels(labels)
    _check_preds(preds)
    pairs = Counter(zip(preds, labels))
    tp, fp = pairs[("yes", "yes")], pairs[("yes", "no")]
    tn, fn = pairs[("no", "no")], pairs[("no", "yes")]
    n, n_label_yes = len(labels), sum(1 for label in labels if label == "yes")
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, n_label_yes)
    return {
        "accuracy": _ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": _ratio(tp + fp, n),
        "label_yes_ratio": _ratio(n_label_yes, n),
        "n": n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n_invalid": sum(1 for pred in preds if pred is None),
    }


def score_pope(answers: Sequence[str], questions: Sequence[dict], parser: str = "reference") -> dict:
    """Parse raw model answers (aligned with `questions`) and score them; adds `parser` and `version` keys."""
    if parser not in PARSERS:
        raise ValueError(f"unknown POPE parser {parser!r}; choose one of {sorted(PARSERS)}")
    if len(answers) != len(questions):
        raise ValueError(f"POPE: {len(answers)} answers but {len(questions)} questions")
    logger.info("Scoring %d POPE answers with the %s parser", len(answers), parser)
    parse = PARSERS[parser]
    preds = [parse(answer) for answer in answers]
    metrics = pope_metrics(preds, [q["label"] for q in questions])
    return {**metrics, "parser": parser, "version": POPE_VERSION}


MARGINS_FILE = "yes_margins.jsonl"   # beside an evaluation's samples: the model's yes/no log-odds per question


def answers_at_yes_ratio(margins: Sequence[float], yes_ratio: float) -> list[str]:
    """A model's POPE answers with its yes/no threshold moved (the control that arXiv 2504.10020 asks of decoding
    methods): "yes" for the round(yes_ratio x n) questions with the largest margins (the model's log-odds of "yes" over
    "no"; ties keep question order), "no" for the rest. Its accuracy and F1 are what the model itself gets at that
    yes-ratio, so a method's POPE gain beyond them is not a shift of the yes-ratio alone."""
    if not 0.0 <= yes_ratio <= 1.0:
        raise ValueError(f"yes_ratio must be in [0, 1], got {yes_ratio}")
    n_yes = round(yes_ratio * len(margins))
    order = sorted(range(len(margins)), key=lambda i: -margins[i])    # stable: ties in question order
    yes = set(order[:n_yes])
    return ["yes" if i in yes else "no" for i in range(len(margins))]


def yes_ratio_matched(margins: Sequence[float], labels: Sequence[str], yes_ratio: float) -> dict:
    """`pope_metrics` of `answers_at_yes_ratio(margins, yes_ratio)` against `labels`."""
    return pope_metrics(answers_at_yes_ratio(margins, yes_ratio), labels)


def macro_average(per_split: Mapping[str, Mapping]) -> dict:
    """Unweighted mean of accuracy / f1 / precision / recall / yes_ratio over splits (zeros for no splits).

    LLaVA reports the mean F1 over random/popular/adversarial; others the mean accuracy. Both are here, with
    the split names under "splits" so a table can say what was averaged.
    """
    n = len(per_split)
    out = {key: _ratio(sum(float(m[key]) for m in per_split.values()), n) for key in MACRO_KEYS}
    return {**out, "n_splits": n, "splits": sorted(per_split)}


# ---------------------------------------------------------------- question files


def _line_of_record(path: Path, index: int) -> int:
    """1-based line number of the index-th non-blank line (read_jsonl skips blank lines)."""
    with path.open(encoding="utf-8") as f:
        nonblank = [lineno for lineno, line in enumerate(f, start=1) if line.strip()]
    return nonblank[index]


def _question_problem(record: dict, seen: set) -> tuple[str, str] | None:
    """(field, message) for the first problem in one question record, or None."""
    qid = record["question_id"]
    if not isinstance(qid, int) or isinstance(qid, bool):
        return "question_id", f"must be an integer, got {qid!r}"
    if qid in seen:
        return "question_id", f"duplicate id {qid}"
    for field in ("image", "text"):
        if not isinstance(record[field], str) or not record[field]:
            return field, f"must be a non-empty string, got {record[field]!r}"
    if record["label"] not in LABELS:
        return "label", f"must be 'yes' or 'no', got {record['label']!r}"
    return None


def load_pope_questions(path: str | Path) -> list[dict]:
    """Read a POPE question file (JSON lines: question_id, image, text, label; extra fields are kept).

    Raises DataError naming the file, line and field for a missing or ill-typed field, a duplicate question_id
    or a label other than "yes"/"no".
    """
    path = Path(path)
    records = read_jsonl(path, required=QUESTION_FIELDS)
    seen: set = set()
    for index, record in enumerate(records):
        problem = _question_problem(record, seen)
        if problem:
            field, message = problem
            raise DataError(f"{path}, line {_line_of_record(path, index)}, field {field!r}: {message}")
        seen.add(record["question_id"])
    logger.info("Loaded %d POPE questions from %s", len(records), path)
    return records


# ---------------------------------------------------------------- construction


def question_text(obj: str, template: str = "Is there a {} in the image?") -> str:
    """Fill the template, turning its article "a {}" into "an {}" before a vowel, as in the shipped files.

    The reference `create_question` uses `template.replace("a", "an")`, which would also give "imange"; the
    released files read "Is there an oven in the image?", so only the article is changed here. Like the
    reference, only a lower-case first letter in a, e, i, o, u counts as a vowel.
    """
    if obj[:1] in _VOWELS:
        template = re.sub(r"\ba \{\}", "an {}", template)
    return template.format(obj)


def _unique(objects: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(objects))


def _object_counts(images: Sequence[tuple[str, list[str]]]) -> dict[str, int]:
    """Number of sampled images holding each object, keyed in order of first appearance."""
    counts: dict[str, int] = {}
    for _, objects in images:
        for obj in objects:
            counts[obj] = counts.get(obj, 0) + 1
    return counts


def _co_occurrence_ranking(images: Sequence[tuple[str, list[str]]]) -> dict[str, list[str]]:
    """For each object, the other objects ranked by how many sampled images hold both (descending).

    Ties keep first-appearance order (Python's sort is stable), as in the reference `compute_co_occurrence`.
    """
    co: dict[str, dict[str, int]] = {}
    for _, objects in images:
        for obj in objects:
            row = co.setdefault(obj, {})
            for other in objects:
                if other != obj:
                    row[other] = row.get(other, 0) + 1
    return {obj: sorted(row, key=row.get, reverse=True) for obj, row in co.items()}


def _random_negative(rng: random.Random, vocabulary: list[str], excluded: set[str], image: str) -> str:
    """Rejection-sample the vocabulary like the reference (same RNG draws), but fail instead of looping forever."""
    if all(obj in excluded for obj in vocabulary):
        raise ValueError(f"POPE: no negative object left for image {image!r}; the vocabulary is too small")
    while True:
        candidate = rng.choice(vocabulary)
        if candidate not in excluded:
            return candidate


def _first_allowed(ranking: Sequence[str], excluded: set[str]) -> str | None:
    return next((obj for obj in ranking if obj not in excluded), None)


def _negative(strategy: str, positive: str, excluded: set[str], image: str, ctx: dict) -> str:
    if strategy == "popular":
        choice = _first_allowed(ctx["popular"], excluded)
    elif strategy == "adversarial":
        choice = _first_allowed(ctx["co_occurrence"][positive], excluded)
    else:
        choice = None
    # random split, and the reference's fallback when a ranking is exhausted
    return choice if choice is not None else _random_negative(ctx["rng"], ctx["vocabulary"], excluded, image)


def _build_split(
    strategy: str,
    images: Sequence[tuple[str, list[str]]],
    sample_num: int,
    template: str,
    first_question_id: int,
    ctx: dict,
) -> list[dict]:
    """One split: per image, positive i (the image's i-th object) is followed by its negative."""
    questions: list[dict] = []
    for image, objects in images:
        excluded = set(objects)  # the image's objects, then every object already asked about
        for positive in objects[:sample_num]:
            negative = _negative(strategy, positive, excluded, image, ctx)
            excluded.add(negative)
            for obj, label in ((positive, "yes"), (negative, "no")):
                questions.append(
                    {
                        "question_id": first_question_id + len(questions),
                        "image": image,
                        "text": question_text(obj, template),
                        "label": label,
                    }
                )
    return questions


def build_pope_questions(
    image_objects: Mapping[str, Sequence[str]],
    *,
    img_num: int = 500,
    sample_num: int = 3,
    seed: int = 0,
    template: str = "Is there a {} in the image?",
    first_question_id: int = 1,
) -> dict[str, list[dict]]:
    """POPE's construction (AoiDragon/POPE `main.py` + `utils.pope`) for the splits random, popular, adversarial.

    image_objects: image file name -> its ground-truth objects, in the order positives are taken.
    Procedure: keep images with >= sample_num distinct objects; draw img_num of them with
    `random.Random(seed).sample` (in the mapping's order); per image, for each of its first sample_num objects
    ask a "yes" question followed by a "no" question about a negative object that is neither in the image nor
    already asked for it (2 * sample_num questions per image, half "yes"). Negatives:
      random      - uniform over the objects of the sampled images (rejection sampling, as the reference);
      popular     - the first allowed object by number of sampled images holding it (descending);
      adversarial - the first allowed object by co-occurrence with the current positive over the sampled images
                    (descending); popular and adversarial fall back to random when their ranking is exhausted.
    Ties in both rankings keep first-appearance order over the sampled images (stable sort, as the reference).
    One RNG serves the image draw and then the three splits in the order random, popular, adversarial, exactly
    as the reference's global `random` module does, so with `random.seed(seed)` in the reference the outputs
    coincide. Returns {split: [{"question_id", "image", "text", "label"}, ...]}.

    Deviations from the reference, all neutral for the metrics: object lists are de-duplicated (order kept),
    so a repeated object is neither asked twice nor counted twice (the COCO lists already hold each category
    once per image: the released counts have person in 348 of the 500 images); "an" only replaces the article
    (see `question_text`); ids start at `first_question_id` (1 like the reference code; the released files
    start at 0, pass 0 to match them); an exhausted vocabulary raises ValueError instead of looping forever.
    The released random split lists 3 positives then 3 negatives per image (an older commit); the current
    code, followed here, interleaves them.
    """
    if sample_num < 1 or img_num < 1:
        raise ValueError(f"POPE: img_num ({img_num}) and sample_num ({sample_num}) must be >= 1")
    eligible = [(image, _unique(objs)) for image, objs in image_objects.items() if len(_unique(objs)) >= sample_num]
    if len(eligible) < img_num:
        raise ValueError(
            f"POPE: only {len(eligible)} of {len(image_objects)} images have >= {sample_num} distinct "
            f"objects, fewer than img_num={img_num}"
        )
    logger.info("Building POPE from %d of %d eligible images (seed %d)", img_num, len(eligible), seed)
    rng = random.Random(seed)
    images = rng.sample(eligible, img_num)
    counts = _object_counts(images)
    ctx = {
        "rng": rng,
        "vocabulary": list(counts),
        "popular": sorted(counts, key=counts.get, reverse=True),
        "co_occurrence": _co_occurrence_ranking(images),
    }
    return {
        strategy: _build_split(strategy, images, sample_num, template, first_question_id, ctx) for strategy in SPLITS
    }


def load_coco_objects(instances_path: str | Path) -> dict[str, list[str]]:
    """image file name -> its object categories, from COCO instance annotations read with pycocotools, for
    `build_pope_questions`. Categories are listed once per image, in the order of their first annotation (by
    annotation id), as POPE's ground-truth segmentation file lists them; images without annotations are kept
    (empty lists) so the caller sees the whole set. Malformed files raise DataError naming the file."""
    from pycocotools.coco import COCO

    path = Path(instances_path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        coco = COCO(str(path))
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise DataError(f"{path}: not a COCO instance annotation file: {e!r}") from e
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    objects = {}
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=image_id)), key=lambda a: a["id"])
        objects[info["file_name"]] = list(dict.fromkeys(names[a["category_id"]] for a in anns))
    return objects
