"""Runners for the benchmarks beyond POPE and CHAIR: MMHal(-V) and LLaVA-Bench (judged), Object HalBench, AMBER.

Each runner reads its benchmark's files from the data directory (a world edition or the real release in the
same layout, see `mmstudy.benchmarks.registry`), generates with the registered settings, asks the judge where
the protocol needs one, and hands answers / verdicts to the benchmark's pure scorer. Judge failures are counted
(`<name>/judge_failures`) and never scored; every sample keeps the judge's text.

    >>> metrics, samples = run_mmhal(model, processor, ctx)
"""

from __future__ import annotations

import logging

from mmstudy.benchmarks import amber as amber_lib
from mmstudy.benchmarks import chair as chair_lib
from mmstudy.benchmarks import llava_bench as llava_lib
from mmstudy.benchmarks import mmhal as mmhal_lib
from mmstudy.benchmarks import objhal as objhal_lib
from mmstudy.evaluation.runners import (
    EvalContext,
    ImageCache,
    answer_questions,
    coco_ground_truth,
)
from mmstudy.judges.base import JudgeReply, JudgeRequest

logger = logging.getLogger(__name__)


def _image_cache(ctx: EvalContext, subdir: str) -> ImageCache:
    """`<data>/<subdir>/images` when the release keeps its own images there, else the world's `<data>/images`."""
    own = ctx.data_dir / subdir / "images"
    return ImageCache(own) if own.is_dir() else ctx.images


def ask_judge(ctx: EvalContext, name: str, requests: list[JudgeRequest]) -> tuple[list[JudgeReply], dict]:
    """The judge's replies, and metrics naming the judge and counting its failures."""
    judge = ctx.require_judge(name)
    logger.info("%s: %d requests to judge %s", name, len(requests), judge.name)
    replies = judge.complete(requests)
    failures = sum(r.text is None for r in replies)
    if failures:
        logger.warning("%s: the judge failed on %d of %d requests (counted, not scored)", name, failures,
                       len(requests))
    return replies, {f"{name}/judge": judge.name, f"{name}/judge_failures": failures}


def _run_mmhal(model, processor, ctx: EvalContext, name: str, with_image: bool) -> tuple[dict, list[dict]]:
    path = ctx.data_dir / "mmhal" / "response_template.json"
    items = mmhal_lib.load_mmhal(path)[:ctx.limit]
    images = _image_cache(ctx, "mmhal")
    files = [mmhal_lib.image_file(it) for it in items]
    pics = [images.get(f, f"{path}, record {i}") for i, f in enumerate(files)]
    logger.info("%s: %d questions", name, len(items))
    answers = answer_questions(model, processor, ctx, pics, [it["question"] for it in items], name)
    metrics, replies, ratings = judge_mmhal(ctx, name, items, answers, images if with_image else None)
    samples = [{"benchmark": name, "index": i, "image": f, "question_type": it["question_type"],
                "question": it["question"], "gt_answer": it["gt_answer"], "answer": a, "judge_text": r.text,
                "judge_error": r.error, "rating": rating}
               for i, (it, f, a, r, rating) in enumerate(zip(items, files, answers, replies, ratings))]
    return metrics, samples


def judge_mmhal(ctx: EvalContext, name: str, items: list[dict], answers: list[str], images: ImageCache | None):
    """Rate `answers` to MMHal `items` with the reference prompt (the image attached when `images` is given: MMHal-V)
    -> (metrics in both modes: `<name>/...` strict, `<name>/reference/...`; the replies; the parsed ratings)."""
    scenes = ctx.scenes()
    requests = []
    for i, (it, a) in enumerate(zip(items, answers)):
        f = mmhal_lib.image_file(it)
        requests.append(JudgeRequest(mmhal_lib.judge_prompt(it, a), image=images.path(f) if images else None,
                                     task="mmhal", key=f"{name}/{i}",
                                     context={"answer": a, "gt_answer": it["gt_answer"], "scene": scenes.get(f)}))
    replies, metrics = ask_judge(ctx, name, requests)
    ratings = [mmhal_lib.parse_rating(r.text) for r in replies]
    failed = [r.text is None for r in replies]
    types = [it["question_type"] for it in items]
    for mode, prefix in (("strict", name), ("reference", f"{name}/reference")):
        scored = mmhal_lib.mmhal_metrics(ratings, types, failed, mode=mode)
        metrics.update({f"{prefix}/{k}": v for k, v in scored.items()})
    return metrics, replies, ratings


def run_mmhal(model, processor, ctx: EvalContext) -> tuple[dict, list[dict]]:
    """MMHal-Bench: the reference prompt, text only (the judge sees `image_content`, not the image)."""
    return _run_mmhal(model, processor, ctx, "mmhal", with_image=False)


def run_mmhal_v(model, processor, ctx: EvalContext) -> tuple[dict, list[dict]]:
    """MMHal-V (the paper's variant): the same items and prompt, with the image attached for the judge."""
    return _run_mmhal(model, processor, ctx, "mmhal_v", with_image=True)


def benchmark_synonyms(ctx: EvalContext) -> chair_lib.Synonyms:
    """The data's own synonym list (a world's synonyms.txt, fixed handling), else RLAIF-V's refined COCO list."""
    own = ctx.data_dir / "synonyms.txt"
    if own.is_file():
        return chair_lib.load_synonyms(own, strip=True, protect_vocabulary=True)
    return objhal_lib.rlaifv_synonyms(chair_lib.load_synonyms(chair_lib.COCO_SYNONYMS_PATH))


def run_objhal(model, processor, ctx: EvalContext) -> tuple[dict, list[dict]]:
    """Object HalBench: long descriptions scored like CHAIR (response / object level, Recall_coco). Objects come
    from CHAIR's rules, or from the judge with RLAIF-V's extraction prompt when ctx.objhal_extractor == "judge".
    Ground truth: COCO instances + reference captions under <data>/annotations (or <data>/objhal/annotations)."""
    path = ctx.data_dir / "objhal" / "obj_halbench_300_with_image.jsonl"
    questions = objhal_lib.load_questions(path)[:ctx.limit]
    own_images = ctx.data_dir / "objhal" / "images"
    pics = [objhal_lib.question_image(q, own_images if own_images.is_dir() else ctx.images.image_dir)
            for q in questions]
    logger.info("Object HalBench: %d descriptions", len(questions))
    texts = answer_questions(model, processor, ctx, pics, [q.question for q in questions], "objhal")
    answers = [objhal_lib.ObjHalAnswer(q.image_id, q.question, objhal_lib.clean_answer_text(t), q.where)
               for q, t in zip(questions, texts)]
    synonyms = benchmark_synonyms(ctx)
    annotations = ctx.data_dir / "objhal" / "annotations"
    gt = coco_ground_truth(annotations if annotations.is_dir() else ctx.data_dir / "annotations", synonyms)
    metrics, replies = {}, None
    if ctx.objhal_extractor == "judge":
        wanted = [i for i, a in enumerate(answers) if objhal_lib.needs_extraction(a.text)]
        requests = [JudgeRequest(objhal_lib.build_extraction_prompt(answers[i].question, answers[i].text),
                                 task="objects", key=f"objhal/{i}", context={"answer": answers[i].text})
                    for i in wanted]
        got, metrics = ask_judge(ctx, "objhal", requests)
        replies = [None] * len(answers)
        for i, r in zip(wanted, got):
            replies[i] = r.text
    scored, records = objhal_lib.score_objhal(answers, gt, synonyms, extractor=ctx.objhal_extractor,
                                              judge_outputs=replies, seed=ctx.seed)
    metrics.update({f"objhal/{k}": v for k, v in scored.items()})
    samples = [{"benchmark": "objhal", "index": i, "question": q.question, **r}
               for i, (q, r) in enumerate(zip(questions, records))]
    return metrics, samples


def run_llava_w(model, processor, ctx: EvalContext) -> tuple[dict, list[dict]]:
    """LLaVA-Bench (in the wild): the judge compares the model's answer with the reference answer (the
    reference's text-only review with captions as context); relative score per category and overall."""
    root = ctx.data_dir / "llava_bench"
    questions = llava_lib.load_questions(root / "questions.jsonl")[:ctx.limit]
    contexts = llava_lib.load_context(root / "context.jsonl")
    references = llava_lib.load_answers(root / "answers_gpt4.jsonl")
    images = _image_cache(ctx, "llava_bench")
    pics = [images.get(q["image"], f"{root / 'questions.jsonl'}, question_id {q['question_id']}")
            for q in questions]
    logger.info("LLaVA-Bench: %d questions", len(questions))
    texts = answer_questions(model, processor, ctx, pics, [q["text"] for q in questions], "llava_w")
    answers = {q["question_id"]: {"question_id": q["question_id"], "text": t} for q, t in zip(questions, texts)}
    items = llava_lib.build_review_items(questions, contexts, references, answers)
    scenes = ctx.scenes()
    requests = [JudgeRequest(it["prompt"], system=llava_lib.JUDGE_SYSTEM_PROMPT, task="llava_w",
                             key=f"llava_w/{q['question_id']}",
                             context={"answer": answers[q["question_id"]]["text"], "scene": scenes.get(q["image"]),
                                      "reference": references[q["question_id"]]["text"]})
                for q, it in zip(questions, items)]
    replies, metrics = ask_judge(ctx, "llava_w", requests)
    reviews = [r.text for r in replies]
    for mode, prefix in (("strict", "llava_w"), ("reference", "llava_w/reference")):
        scored, records = llava_lib.score_llava_bench(questions, contexts, references, answers, reviews=reviews,
                                                      mode=mode, seed=ctx.seed)
        metrics.update({f"{prefix}/{k}": v for k, v in scored.items()})
    samples = [{"benchmark": "llava_w", "image": q["image"], "question": q["text"],
                "answer": answers[q["question_id"]]["text"], **{k: v for k, v in r.items() if k != "prompt"}}
               for q, r in zip(questions, records)]
    return metrics, samples


def run_amber(model, processor, ctx: EvalContext) -> tuple[dict, list[dict]]:
    """AMBER: generative queries ("Describe this image.") and yes/no questions, scored by the reference rules
    (`amber/...`, only an exact "Yes"/"No" counts) and, by name, with the first word parsed
    (`amber/first_word/...`). `limit` takes the first N queries of each kind."""
    root = ctx.data_dir / "amber"
    annotations = amber_lib.load_amber_annotations(root / amber_lib.ANNOTATIONS_FILE)
    association = amber_lib.load_association(root / amber_lib.RELATION_FILE)
    amber_lib.check_annotation_objects(annotations, association, root / amber_lib.ANNOTATIONS_FILE,
                                       root / amber_lib.RELATION_FILE)
    safe_words = amber_lib.load_safe_words(root / amber_lib.SAFE_WORDS_FILE)
    kinds = {a["id"]: a["type"] for a in annotations}
    queries = amber_lib.load_amber_queries(root / "query_all.json")
    images = _image_cache(ctx, "amber")
    responses = []
    for generative in (True, False):
        part = [q for q in queries if (kinds.get(q["id"]) == amber_lib.GENERATIVE) == generative][:ctx.limit]
        pics = [images.get(q["image"], f"{root / 'query_all.json'}, id {q['id']}") for q in part]
        logger.info("AMBER: %d %s queries", len(part), "generative" if generative else "yes/no")
        texts = answer_questions(model, processor, ctx, pics, [q["query"] for q in part], "amber",
                                 short=not generative)
        responses += [{"id": q["id"], "response": t} for q, t in zip(part, texts)]
    metrics, records = {}, {}
    for parser, prefix in (("reference", "amber"), ("first_word", "amber/first_word")):
        scored, records[parser] = amber_lib.score_amber(responses, annotations, association, safe_words,
                                                        parser=parser, seed=ctx.seed)
        metrics.update({f"{prefix}/{k}": v for k, v in scored.items()})
    query_of = {q["id"]: q for q in queries}
    samples = [{"benchmark": "amber", "image": query_of[r["id"]]["image"], "query": query_of[r["id"]]["query"], **r,
                **({"prediction_first_word": f["prediction"], "correct_first_word": f["correct"]}
                   if "prediction" in r else {})}
               for r, f in zip(records["reference"], records["first_word"])]
    return metrics, samples
