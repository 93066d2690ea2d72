"""Scoring answers that already exist, from any system: POPE, CHAIR, Object HalBench and MMHal answer files in the
formats the reference implementations write (`mmstudy score`)."""

from __future__ import annotations

from pathlib import Path

from mmstudy import io
from mmstudy.benchmarks import chair as chair_lib
from mmstudy.benchmarks import mmhal as mmhal_lib
from mmstudy.benchmarks import objhal as objhal_lib
from mmstudy.benchmarks import pope as pope_lib
from mmstudy.evaluation.judged import judge_mmhal
from mmstudy.evaluation.runners import EvalContext, ImageCache, chair_intervals, coco_ground_truth, pope_intervals


def score_pope_file(questions_path: str | Path, answers_path: str | Path, parser: str = "reference") -> dict:
    """POPE metrics of an answers file as LLaVA's evaluation writes it (JSON lines with `question_id`, `text`),
    against a POPE question file, with a 95 % bootstrap interval for the accuracy (`accuracy_ci`)."""
    questions = pope_lib.load_pope_questions(questions_path)
    answers = {}
    for i, a in enumerate(io.read_jsonl(answers_path, required=("question_id", "text"))):
        if not isinstance(a["text"], str):
            raise io.DataError(f"{answers_path}, record {i + 1}: field 'text' must be a string")
        answers[a["question_id"]] = a["text"]
    missing = [q["question_id"] for q in questions if q["question_id"] not in answers]
    if missing:
        raise io.DataError(f"{answers_path}: no answer for {len(missing)} question_id(s) of {questions_path}, "
                           f"e.g. {missing[:5]}")
    texts = [answers[q["question_id"]] for q in questions]
    metrics = pope_lib.score_pope(texts, questions, parser=parser)
    intervals = pope_intervals([pope_lib.PARSERS[parser](t) for t in texts], questions)
    metrics.update({f"{name}_ci": ci for name, ci in intervals.items()})
    return metrics


def score_chair_file(captions_path: str | Path, coco_dir: str | Path, synonyms_path: str | Path | None = None,
                     fixed: bool = False) -> dict:
    """CHAIR of a captions file as the reference reads it (a JSON list of `{"image_id", "caption"}`), with COCO
    annotations from `coco_dir`; `fixed` selects the fixed synonym handling (strip + protect_vocabulary).
    Adds 95 % bootstrap intervals over captions for CHAIR_i and recall."""
    captions = io.read_json(captions_path)
    if not isinstance(captions, list):
        raise io.DataError(f"{captions_path}: expected a JSON list of {{'image_id', 'caption'}} records")
    for i, c in enumerate(captions):
        io.check_fields(c, ("image_id", "caption"), f"{captions_path}, record {i}")
    options = {"strip": True, "protect_vocabulary": True} if fixed else {}
    synonyms = chair_lib.load_synonyms(synonyms_path or chair_lib.COCO_SYNONYMS_PATH, **options)
    gt = coco_ground_truth(coco_dir, synonyms)
    unknown = [c["image_id"] for c in captions if c["image_id"] not in gt]
    if unknown:
        raise io.DataError(f"{captions_path}: image_id(s) not in the annotations of {coco_dir}, e.g. {unknown[:5]}")
    texts, gts = [c["caption"] for c in captions], [gt[c["image_id"]] for c in captions]
    metrics = chair_lib.chair_metrics(texts, gts, synonyms)
    details = chair_lib.chair_per_caption(texts, gts, synonyms)
    metrics["mode"] = "fixed" if fixed else "reference"
    metrics.update({f"{name}_ci": ci for name, ci in chair_intervals(details).items()})
    return metrics


def score_objhal_file(answers_path, coco_dir, questions_path=None, synonyms_path=None) -> dict:
    """Object HalBench metrics (rule extractor) of an answers file as RLAIF-V writes it, with CHAIR's ground truth
    from the COCO annotations in `coco_dir`; synonyms default to RLAIF-V's refined COCO list."""
    questions = objhal_lib.load_questions(questions_path) if questions_path else None
    answers = objhal_lib.load_answers(answers_path, questions)
    synonyms = (chair_lib.load_synonyms(synonyms_path, strip=True, protect_vocabulary=True) if synonyms_path
                else objhal_lib.rlaifv_synonyms(chair_lib.load_synonyms(chair_lib.COCO_SYNONYMS_PATH)))
    metrics, _ = objhal_lib.score_objhal(answers, coco_ground_truth(coco_dir, synonyms), synonyms)
    return metrics


def score_mmhal_file(responses_path, judge, image_dir=None, world_dir=None, with_image: bool = False) -> dict:
    """MMHal metrics (`mmhal/...` strict, `mmhal/reference/...`) of a filled-in `response_template.json` (items with
    `model_answer`), judged by `judge`; `with_image` attaches each image (MMHal-V; needs `image_dir`). `world_dir`
    gives the oracle its ground truth for world items."""
    items = mmhal_lib.load_mmhal(responses_path)
    unanswered = [i for i, it in enumerate(items) if not isinstance(it.get("model_answer"), str)]
    if unanswered:
        raise ValueError(f"{responses_path}: record(s) {unanswered[:5]} have no string field 'model_answer'")
    if with_image and image_dir is None:
        raise ValueError("MMHal-V needs the images: give image_dir (--images)")
    ctx = EvalContext(Path(world_dir) if world_dir else Path(responses_path).parent,
                      ImageCache(Path(image_dir or ".")), judge=judge, _scenes=None if world_dir else {})
    metrics, _, _ = judge_mmhal(ctx, "mmhal", items, [it["model_answer"] for it in items],
                                ctx.images if with_image else None)
    return metrics
