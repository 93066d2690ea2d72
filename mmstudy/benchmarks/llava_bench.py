"""LLaVA-Bench (in the wild) (Liu et al., NeurIPS 2023; haotian-liu/LLaVA): a judge compares two answers.

24 images, 60 questions in three categories (conv, detail, complex). For each question a text-only judge
(GPT-4 in the reference) reads a caption of the image, the question, a reference answer (text-only GPT-4,
`answers_gpt4.jsonl`) as Assistant 1 and the model's answer as Assistant 2, and writes two 1-10 scores on its
first line. The headline number is the *relative score*: 100 x mean(model score) / mean(reference score), per
category and overall. This module reads the released files, renders the judge prompt, parses the judge's
reply and scores; it never calls a judge itself (`score_llava_bench` takes the replies, or an `ask` callable).

Protocol followed (LLaVA `llava/eval/eval_gpt_review_bench.py`, `llava/eval/summarize_gpt_review.py`,
`llava/eval/table/rule.json`; see docs/benchmarks.md):
    * files: `questions.jsonl` (question_id, image, text, category), `context.jsonl` (id, image, caption),
      `answers_gpt4.jsonl` and model answers (question_id, prompt, text, answer_id, model_id, metadata, as
      `llava/eval/model_vqa.py` writes them), `rule.json` ({"llava_bench_<category>": {"role", "prompt"}});
    * prompt (`build_review_prompt`): the user message
          [Context]\\n{caption}\\n\\n[Question]\\n{question}\\n\\n
          [{role} 1]\\n{reference answer}\\n\\n[End of {role} 1]\\n\\n
          [{role} 2]\\n{model answer}\\n\\n[End of {role} 2]\\n\\n[System]\\n{rule prompt}\\n\\n
      with the rule of "llava_bench_" + category (`REFERENCE_RULES`, the three identical texts of rule.json,
      role "Assistant"); a caption given as a list is joined with newlines. The reference sends it with the
      system message `JUDGE_SYSTEM_PROMPT` to gpt-4-0314 at temperature 0.2, max_tokens 1024 (`JUDGE_MODEL`,
      `JUDGE_SETTINGS`);
    * parsing (`parse_review`, the reference `parse_score`): the reply's first line, commas turned into spaces,
      split on single spaces; exactly two parts, both floats, else unparseable. So "8 9" and "8,9" parse, and
      "8, 9", "8 9 " (trailing space) or "Assistant 1: 8" do not;
    * score (`llava_bench_metrics`): per category and over all questions, mean of the (reference, model) pairs;
      relative_score = 100 x mean(model) / mean(reference). The reference prints round(100 x m / r, 1) with m
      and r first rounded to 3 decimals; here nothing is rounded.

Unparseable replies: the reference stores them as [-1, -1] and the summary averages them in like any other
pair, so each one lowers both means (relative = (sum model - k) / (sum reference - k) for k failures). Here
they are counted (`n_unparseable`) and, by default (`mode="strict"`), left out of the means; `mode="reference"`
averages them in as (-1, -1), for comparison with published numbers. A judge failure (reply None) is counted
in `n_failed` and left out in both modes (the reference retries the API until it gets a reply).

Deviations: answers are matched to questions by question_id (the reference zips the three files line by line
and stops at the shortest; the released files are in the same order, so the pairs coincide), and a missing
answer or context raises DataError instead of being silently dropped; model answers need no answer_id (the
reference reads `ans2['answer_id']`); non-finite scores ("nan 8") count as unparseable (the reference's float()
accepts them); the stored reference commit joins `caption` with newlines unconditionally, which would put each
character of a string caption on its own line, so a string caption is used as is (as later LLaVA forks and
lmms-eval do).

The judge texts (`JUDGE_SYSTEM_PROMPT`, the rule prompt) are reproduced verbatim from LLaVA (Apache-2.0,
github.com/haotian-liu/LLaVA, `llava/eval/eval_gpt_review_bench.py` and `llava/eval/table/rule.json`).

    >>> qs, ctx = load_questions("questions.jsonl"), load_context("context.jsonl")
    >>> ref, model = load_answers("answers_gpt4.jsonl"), load_answers("answers/model.jsonl")
    >>> metrics, records = score_llava_bench(qs, ctx, ref, model, ask=my_judge)   # metrics["relative_score"]
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

import numpy as np

from mmstudy.benchmarks.stats import bootstrap_ci
from mmstudy.io import DataError, read_json, read_jsonl

logger = logging.getLogger(__name__)

LLAVA_BENCH_VERSION = 1  # bump whenever the prompt, parsing or scoring changes
CATEGORIES = ("conv", "detail", "complex")
RULE_PREFIX = "llava_bench_"
MODES = ("strict", "reference")
REFERENCE_FAILURE_SCORES = (-1.0, -1.0)  # what the reference stores for an unparseable reply
QUESTION_FIELDS = ("question_id", "image", "text", "category")
CONTEXT_FIELDS = ("image", "caption")
ANSWER_FIELDS = ("question_id", "text")
REVIEW_FIELDS = ("question_id", "category", "content")

JUDGE_MODEL = "gpt-4-0314"
JUDGE_SETTINGS = MappingProxyType({"temperature": 0.2, "max_tokens": 1024})
# Verbatim from LLaVA `llava/eval/eval_gpt_review_bench.py` (the system message of every review request).
JUDGE_SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."
# Verbatim from LLaVA `llava/eval/table/rule.json`: the prompt of llava_bench_conv, llava_bench_detail and
# llava_bench_complex (the three are identical), including the space before its first newline.
_RULE_PROMPT = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. For your reference, the visual "
    "content in the image is represented with a few sentences describing the image. \n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 and 2, "
    "respectively. The two scores are separated by a space.\n"
    "In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any "
    "potential bias and ensuring that the order in which the responses were presented does not affect your "
    "judgment."
)
REFERENCE_RULES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {f"{RULE_PREFIX}{c}": MappingProxyType({"role": "Assistant", "prompt": _RULE_PROMPT}) for c in CATEGORIES}
)


# ---------------------------------------------------------------- files


def _nonblank_lines(path: Path) -> list[int]:
    with path.open(encoding="utf-8") as f:
        return [lineno for lineno, line in enumerate(f, start=1) if line.strip()]


def _records(path: str | Path, required: Sequence[str]) -> list[tuple[dict, str]]:
    """(record, "file, line N") for every record of a JSON-lines file with the required fields."""
    path = Path(path)
    records = read_jsonl(path, required=required)
    return [(r, f"{path}, line {n}") for r, n in zip(records, _nonblank_lines(path))]


def _check_id(value, where: str, seen: set) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise DataError(f"{where}, field 'question_id': must be an integer or a non-empty string, got {value!r}")
    if value in seen:
        raise DataError(f"{where}, field 'question_id': duplicate id {value!r}")
    seen.add(value)


def _check_string(record: dict, field: str, where: str) -> None:
    if not isinstance(record[field], str):
        raise DataError(f"{where}, field {field!r}: must be a string, got {type(record[field]).__name__}")


def load_questions(path: str | Path, categories: Sequence[str] = CATEGORIES) -> list[dict]:
    """Read `questions.jsonl` (question_id, image, text, category; extra fields kept), in file order.

    Raises DataError naming the file, line and field for a missing or ill-typed field, a duplicate question_id,
    or a category outside `categories`."""
    seen: set = set()
    out = []
    for record, where in _records(path, QUESTION_FIELDS):
        _check_id(record["question_id"], where, seen)
        for field in ("image", "text"):
            _check_string(record, field, where)
        if record["category"] not in categories:
            raise DataError(f"{where}, field 'category': {record['category']!r} is not one of {list(categories)}")
        out.append(record)
    logger.info("Loaded %d LLaVA-Bench questions from %s", len(out), path)
    return out


def load_context(path: str | Path) -> dict[str, dict]:
    """Read `context.jsonl` (id, image, caption) into {image: record}, as the reference keys it. caption is a
    string or a list of strings. DataError names the file, line and field (also for a repeated image)."""
    out: dict[str, dict] = {}
    for record, where in _records(path, CONTEXT_FIELDS):
        _check_string(record, "image", where)
        caption = record["caption"]
        is_list = isinstance(caption, list) and all(isinstance(c, str) for c in caption)
        if not (isinstance(caption, str) or is_list):
            raise DataError(f"{where}, field 'caption': must be a string or a list of strings")
        if record["image"] in out:
            raise DataError(f"{where}, field 'image': duplicate image {record['image']!r}")
        out[record["image"]] = record
    return out


def load_answers(path: str | Path) -> dict:
    """Read an answer file (`answers_gpt4.jsonl` or a model's: question_id, text, plus prompt, answer_id,
    model_id, metadata) into {question_id: record}. DataError names the file, line and field."""
    seen: set = set()
    out = {}
    for record, where in _records(path, ANSWER_FIELDS):
        _check_id(record["question_id"], where, seen)
        _check_string(record, "text", where)
        out[record["question_id"]] = record
    return out


def load_rules(path: str | Path) -> dict[str, dict]:
    """Read a `rule.json` ({name: {"role", "prompt"}}); DataError names the file, the entry and the field."""
    rules = read_json(path)
    if not isinstance(rules, dict):
        raise DataError(f"{path}: expected a JSON object of rules, got {type(rules).__name__}")
    for name, rule in rules.items():
        where = f"{path}, rule {name!r}"
        if not isinstance(rule, dict):
            raise DataError(f"{where}: expected an object with 'role' and 'prompt'")
        for field in ("role", "prompt"):
            if field not in rule:
                raise DataError(f"{where}: missing field {field!r}")
            if not isinstance(rule[field], str):
                raise DataError(f"{where}, field {field!r}: must be a string")
    return rules


def load_reviews(path: str | Path) -> list[dict]:
    """Read a review file as `eval_gpt_review_bench.py` writes it (id, question_id, answer1_id, answer2_id,
    category "llava_bench_<c>", content, tuple), so a published run can be re-scored from its judge texts."""
    out = []
    for record, where in _records(path, REVIEW_FIELDS):
        for field in ("category", "content"):
            _check_string(record, field, where)
        out.append(record)
    return out


# ---------------------------------------------------------------- judge prompt and parsing


def context_text(caption: str | Sequence[str]) -> str:
    """The [Context] text: a string caption as is, a list of captions joined with newlines."""
    return caption if isinstance(caption, str) else "\n".join(caption)


def build_review_prompt(caption: str | Sequence[str], question: str, reference_answer: str, model_answer: str,
                        category: str, rules: Mapping[str, Mapping[str, str]] = REFERENCE_RULES) -> str:
    """The reference review request (user message) for one question; Assistant 1 is the reference answer,
    Assistant 2 the model's. ValueError when `rules` has no "llava_bench_<category>"."""
    key = RULE_PREFIX + category
    if key not in rules:
        raise ValueError(f"LLaVA-Bench: no judge rule {key!r} (rules: {sorted(rules)})")
    role, prompt = rules[key]["role"], rules[key]["prompt"]
    return (f"[Context]\n{context_text(caption)}\n\n"
            f"[Question]\n{question}\n\n"
            f"[{role} 1]\n{reference_answer}\n\n[End of {role} 1]\n\n"
            f"[{role} 2]\n{model_answer}\n\n[End of {role} 2]\n\n"
            f"[System]\n{prompt}\n\n")


def build_review_items(questions: Sequence[dict], contexts: Mapping[str, dict], reference_answers: Mapping,
                       model_answers: Mapping,
                       rules: Mapping[str, Mapping[str, str]] = REFERENCE_RULES) -> list[dict]:
    """One {"question_id", "category", "prompt"} per question, in question order. DataError lists the
    question_ids without a reference or model answer and the images without a context."""
    problems = []
    for label, table in (("reference answer", reference_answers), ("model answer", model_answers)):
        missing = [q["question_id"] for q in questions if q["question_id"] not in table]
        if missing:
            problems.append(f"no {label} for question_id(s) {missing[:10]}")
    no_context = sorted({q["image"] for q in questions if q["image"] not in contexts})
    if no_context:
        problems.append(f"no context for image(s) {no_context[:10]}")
    if problems:
        raise DataError("LLaVA-Bench: " + "; ".join(problems))
    return [{"question_id": q["question_id"], "category": q["category"],
             "prompt": build_review_prompt(contexts[q["image"]]["caption"], q["text"],
                                           reference_answers[q["question_id"]]["text"],
                                           model_answers[q["question_id"]]["text"], q["category"], rules)}
            for q in questions]


def parse_review(text: str | None) -> tuple[float, float] | None:
    """(reference score, model score) from the judge's first line, by the reference rule, or None.

    "8 10\\nBoth ..." -> (8.0, 10.0); "9,6.5" -> (9.0, 6.5); "8, 9" -> None (the comma becomes a space: three
    parts); "8 9 " -> None; "Scores: 8 9" -> None; "" and None -> None.
    """
    if text is None:
        return None
    parts = text.split("\n")[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return None
    try:
        scores = (float(parts[0]), float(parts[1]))
    except ValueError:
        return None
    return scores if all(math.isfinite(s) for s in scores) else None


# ---------------------------------------------------------------- metrics


def _relative_of_sums(rows: np.ndarray) -> float:
    """100 x sum(model) / sum(reference) for rows of (reference, model): the relative score of the rows."""
    den = rows[:, 0].sum()
    return float(100.0 * rows[:, 1].sum() / den) if den else float("nan")


def _summary(prefix: str, pairs: Sequence[tuple[float, float]]) -> dict:
    arr = np.asarray(pairs, dtype=float).reshape(-1, 2)
    if len(arr) == 0:
        nan = float("nan")
        return {f"{prefix}relative_score": nan, f"{prefix}reference_score": nan, f"{prefix}model_score": nan}
    return {f"{prefix}relative_score": _relative_of_sums(arr), f"{prefix}reference_score": float(arr[:, 0].mean()),
            f"{prefix}model_score": float(arr[:, 1].mean())}


def llava_bench_metrics(categories: Sequence[str], scores: Sequence[tuple[float, float] | None],
                        failed: Sequence[bool] = (), *, mode: str = "strict", n_boot: int = 1000,
                        seed: int = 0) -> dict:
    """Relative score, mean reference and model scores, overall and per category (`<category>/...`), counts,
    and a 95 % bootstrap interval of the overall relative score (ratio of sums over questions).

    scores[i]: the parsed (reference, model) pair of question i, None when unparseable; failed[i] marks a judge
    failure (no reply), never scored. mode "strict" leaves unparseable replies out; "reference" averages them in
    as (-1, -1). Keys: relative_score, reference_score, model_score, n (pairs averaged), n_questions,
    n_unparseable, n_failed, relative_score_ci95_low/_high, and the same under "conv/", "detail/", "complex/";
    means over no pairs are NaN.
    """
    if mode not in MODES:
        raise ValueError(f"unknown LLaVA-Bench mode {mode!r}; choose one of {list(MODES)}")
    failed = list(failed) or [False] * len(scores)
    if not len(categories) == len(scores) == len(failed):
        raise ValueError(f"LLaVA-Bench: {len(categories)} categories, {len(scores)} scores, {len(failed)} flags")
    per_category: dict[str, list] = {c: [] for c in CATEGORIES}
    unparseable, failures = Counter(), Counter()
    for category, pair, fail in zip(categories, scores, failed):
        per_category.setdefault(category, [])
        if fail:
            failures[category] += 1
            continue
        if pair is None:
            unparseable[category] += 1
            if mode == "strict":
                continue
            pair = REFERENCE_FAILURE_SCORES
        per_category[category].append(pair)
    pairs = [p for rows in per_category.values() for p in rows]
    metrics = {**_summary("", pairs), "n": len(pairs), "n_questions": len(scores),
               "n_unparseable": sum(unparseable.values()), "n_failed": sum(failures.values())}
    ci = bootstrap_ci(np.asarray(pairs, dtype=float).reshape(-1, 2), _relative_of_sums, n_boot=n_boot, seed=seed)
    metrics["relative_score_ci95_low"], metrics["relative_score_ci95_high"] = ci["low"], ci["high"]
    for category, rows in per_category.items():
        metrics.update(_summary(f"{category}/", rows))
        ci = bootstrap_ci(np.asarray(rows, dtype=float).reshape(-1, 2), _relative_of_sums, n_boot=n_boot, seed=seed)
        metrics[f"{category}/relative_score_ci95_low"], metrics[f"{category}/relative_score_ci95_high"] = (
            ci["low"], ci["high"])
        metrics.update({f"{category}/n": len(rows), f"{category}/n_unparseable": unparseable[category],
                        f"{category}/n_failed": failures[category]})
    metrics.update(mode=mode, version=LLAVA_BENCH_VERSION)
    return metrics


def score_llava_bench(questions: Sequence[dict], contexts: Mapping[str, dict], reference_answers: Mapping,
                      model_answers: Mapping, *, reviews: Sequence[str | None] | None = None,
                      ask: Callable[[list[str]], list[str | None]] | None = None,
                      rules: Mapping[str, Mapping[str, str]] = REFERENCE_RULES, mode: str = "strict",
                      n_boot: int = 1000, seed: int = 0) -> tuple[dict, list[dict]]:
    """LLaVA-Bench of one model: (metrics of `llava_bench_metrics`, one record per question with question_id,
    category, prompt, review, scores [reference, model] or None, unparseable, failed).

    The judge's replies come either as `reviews` (aligned with `questions`, None = judge failure) or from one
    call `ask(prompts) -> replies`; the judge must be given `JUDGE_SYSTEM_PROMPT` as its system message.
    """
    items = build_review_items(questions, contexts, reference_answers, model_answers, rules)
    if (reviews is None) == (ask is None):
        raise ValueError("LLaVA-Bench: pass exactly one of reviews and ask")
    if ask is not None:
        reviews = list(ask([it["prompt"] for it in items]))
    if len(reviews) != len(items):
        raise ValueError(f"LLaVA-Bench: {len(reviews)} reviews for {len(items)} questions")
    records = []
    for item, review in zip(items, reviews):
        pair = parse_review(review)
        records.append({**item, "review": review, "scores": list(pair) if pair else None,
                        "unparseable": review is not None and pair is None, "failed": review is None})
    metrics = llava_bench_metrics([r["category"] for r in records],
                                  [tuple(r["scores"]) if r["scores"] else None for r in records],
                                  [r["failed"] for r in records], mode=mode, n_boot=n_boot, seed=seed)
    if metrics["n_unparseable"] or metrics["n_failed"]:
        logger.warning("LLaVA-Bench: %d unparseable and %d failed judge replies of %d (%s mode)",
                       metrics["n_unparseable"], metrics["n_failed"], len(records), mode)
    logger.info("LLaVA-Bench relative score %.1f over %d questions", metrics["relative_score"], metrics["n"])
    return metrics, records


def score_reviews(reviews: Sequence[dict], *, mode: str = "strict", n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics of a reference review file (`load_reviews`), re-parsing each judge text ("content"); with
    mode="reference" this reproduces `summarize_gpt_review.py` (unrounded)."""
    categories = [r["category"][len(RULE_PREFIX):] if r["category"].startswith(RULE_PREFIX) else r["category"]
                  for r in reviews]
    return llava_bench_metrics(categories, [parse_review(r["content"]) for r in reviews], mode=mode, n_boot=n_boot,
                               seed=seed)
