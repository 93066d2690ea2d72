"""Judges: one interface for everything that reads a prompt (and maybe an image) and writes a verdict as text.

Benchmarks (MMHal, MMHal-V, LLaVA-Bench, Object HalBench's extractor) and, later, online DPO talk to a judge
only through `Judge.complete(requests) -> replies`. The benchmark renders its reference prompt, the judge answers
in text, and the benchmark's own parser reads that text: a model judge and the world's oracle go through the
same parser, so an oracle verdict is scored exactly like a GPT-4 verdict would be.

    oracle            the world's ground truth decides (`JudgeRequest.context`), optionally with an error rate
                      that emulates a weaker annotator (the paper's LLaVA 1.6-7B vs 34B, Tables 10-11)
    local:MODEL_DIR   any local LLaVA / LLaVA-NeXT checkpoint, greedy, the image attached when the request has one
    http:URL          any OpenAI-compatible /chat/completions endpoint (`mmstudy.judges.http.HttpJudge`)

A reply with `text=None` is a judge failure (after retries): callers count and report failures, they never
turn one into a score or a preference.

    >>> judge = make_judge("oracle", seed=0)   # mmstudy.judges.registry
    >>> judge.complete([JudgeRequest(prompt, task="mmhal", context=item)])
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, Sequence

from mmstudy.judges import oracle
from mmstudy.models.generation import generate_texts
from mmstudy.models.llava import load_llava
from mmstudy.runs import derive_seed
from mmstudy.world.scene import CLASSES, Scene

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JudgeRequest:
    """One question to a judge.

    prompt: the full user message. image: path of an image the judge should see (None: text only).
    system: optional system message. task: what is being judged ("mmhal", "llava_w", "objects", "pairwise", ...);
    oracle judges dispatch on it. context: ground truth for oracle judges, never shown to model judges.
    key: a stable identifier of the item (used to derive per-request seeds and in error messages).
    """

    prompt: str
    image: str | None = None
    system: str | None = None
    task: str = ""
    context: Mapping = field(default_factory=dict)
    key: str = ""
    max_tokens: int = 512


@dataclass(frozen=True)
class JudgeReply:
    """A judge's answer: text, or None with an error message when the judge failed after its retries."""

    text: str | None
    error: str | None = None
    cached: bool = False
    attempts: int = 1


class Judge(Protocol):
    """Anything with a name and `complete`; `stats` counts requests, failures, retries and cache hits."""

    name: str
    stats: dict

    def complete(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply]: ...


def new_stats() -> dict:
    return {"requests": 0, "failures": 0, "retries": 0, "cache_hits": 0}


# ---------------------------------------------------------------- the world's oracle


def _scene(request: JudgeRequest) -> Scene:
    record = request.context.get("scene")
    if record is None:
        raise ValueError(f"the oracle judge needs world ground truth, but request {request.key!r} has no scene "
                         f"(is the data a world directory with scenes.jsonl?); use a model judge for real data")
    return Scene.from_record(record)


def _oracle_mmhal(request: JudgeRequest, rng: random.Random, error_rate: float) -> str:
    ctx = request.context
    check = oracle.check_answer(ctx["answer"], _scene(request), ctx["gt_answer"])
    rating = oracle.mmhal_rating(check)
    if rng.random() < error_rate:
        rating = rng.randrange(7)
    return oracle.mmhal_verdict(rating, check)


def _oracle_review(request: JudgeRequest, rng: random.Random, error_rate: float) -> str:
    ctx = request.context
    scene = _scene(request)
    reference = oracle.review_score(oracle.check_answer(ctx["reference"], scene, ctx["reference"]))
    check = oracle.check_answer(ctx["answer"], scene, ctx["reference"])
    score = oracle.review_score(check)
    if rng.random() < error_rate:
        score = rng.randint(1, 10)
    return oracle.review_verdict(reference, score, check)


def _oracle_objects(request: JudgeRequest, rng: random.Random, error_rate: float) -> str:
    words = json.loads(oracle.objects_verdict(request.context["answer"]))
    if rng.random() < error_rate:
        if words and rng.random() < 0.5:
            words.pop(rng.randrange(len(words)))
        else:
            words.append(rng.choice(CLASSES).name)
    return json.dumps(words)


def _prefer(checks: Sequence[oracle.Check]) -> int | None:
    keys = [(len(c.hallucinations), -c.coverage) for c in checks]
    return None if keys[0] == keys[1] else int(keys[1] < keys[0])


def oracle_preference(first: str, second: str, scene: Scene, gt_answer: str | None = None) -> int | None:
    """The world's preference between two responses: 0 (first), 1 (second), or None for a tie. Fewer false claims
    win, then more of the standard answer's facts."""
    return _prefer([oracle.check_answer(r, scene, gt_answer) for r in (first, second)])


def _oracle_pairwise(request: JudgeRequest, rng: random.Random, error_rate: float) -> str:
    """`oracle_preference`; ties go to Response 1."""
    scene, gt = _scene(request), request.context.get("gt_answer")
    checks = [oracle.check_answer(r, scene, gt) for r in request.context["responses"]]
    better = _prefer(checks) or 0
    if rng.random() < error_rate:
        better = 1 - better
    found = "; ".join(checks[1 - better].hallucinations) or "it says less about the image"
    return f"Response {better + 1} is better. The other response is worse: {found}."


ORACLE_RULES = {"mmhal": _oracle_mmhal, "llava_w": _oracle_review, "objects": _oracle_objects,
                "pairwise": _oracle_pairwise}


class OracleJudge:
    """Verdicts from the world's ground truth (`mmstudy.judges.oracle`), written in each benchmark's output format.

    error_rate: per request, with this probability the verdict is replaced by a random one (a random rating, a
    random 1-10 score, an object dropped or added), emulating a weaker annotator. The draw is seeded by
    (seed, task, request key), so a run is reproducible and independent of batching.
    """

    def __init__(self, error_rate: float = 0.0, seed: int = 0):
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"oracle error_rate must be in [0, 1], got {error_rate}")
        self.error_rate, self.seed = error_rate, seed
        self.name = f"oracle(error_rate={error_rate})"
        self.stats = new_stats()

    def complete(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply]:
        replies = []
        for r in requests:
            if r.task not in ORACLE_RULES:
                raise ValueError(f"the oracle judge has no rule for task {r.task!r} (request {r.key!r}); it knows "
                                 f"{sorted(ORACLE_RULES)}")
            rng = random.Random(derive_seed(self.seed, "oracle", r.task, r.key))
            replies.append(JudgeReply(ORACLE_RULES[r.task](r, rng, self.error_rate)))
        self.stats["requests"] += len(requests)
        return replies


# ---------------------------------------------------------------- a local LLaVA checkpoint


class LocalLlavaJudge:
    """Any local LLaVA / LLaVA-NeXT checkpoint as a judge: greedy decoding, the request's image attached when it
    has one, text only otherwise. A prompt longer than the model's context is a counted failure (the reply's
    error says so), not a truncated verdict."""

    def __init__(self, model_dir: str | Path, batch_size: int = 8, device: str = "cpu"):
        self.model, self.processor = load_llava(model_dir, device=device)
        self.name, self.batch_size = f"local:{model_dir}", batch_size
        self.stats = new_stats()
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.max_positions = int(getattr(text_config, "max_position_embeddings", 1 << 30))

    def _messages(self, r: JudgeRequest) -> str:
        content = ([{"type": "image"}] if r.image else []) + [{"type": "text", "text": r.prompt}]
        messages = ([{"role": "system", "content": [{"type": "text", "text": r.system}]}] if r.system else [])
        messages.append({"role": "user", "content": content})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def complete(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply]:
        self.stats["requests"] += len(requests)
        replies: list[JudgeReply | None] = [None] * len(requests)
        runnable = []
        for i, r in enumerate(requests):
            prompt = self._messages(r)
            n_tokens = len(self.processor.tokenizer(prompt)["input_ids"]) + r.max_tokens
            if n_tokens > self.max_positions:
                replies[i] = JudgeReply(None, error=f"prompt + max_tokens = {n_tokens} tokens exceeds the judge's "
                                                    f"context of {self.max_positions}")
            else:
                runnable.append((i, prompt, r))
        for image_wanted in (True, False):
            group = [(i, p, r) for i, p, r in runnable if bool(r.image) == image_wanted]
            if not group:
                continue
            images = [r.image for _, _, r in group] if image_wanted else None
            texts = generate_texts(self.model, self.processor, [p for _, p, _ in group], images,
                                   max_new_tokens=max(r.max_tokens for _, _, r in group),
                                   batch_size=self.batch_size)
            for (i, _, _), text in zip(group, texts):
                replies[i] = JudgeReply(text)
        failed = sum(r.text is None for r in replies)
        if failed:
            logger.warning("%s: %d of %d requests failed, e.g. %s", self.name, failed, len(requests),
                           next(r.error for r in replies if r.text is None))
        self.stats["failures"] += failed
        return replies


# ---------------------------------------------------------------- pairwise preferences (the paper's annotator)

# The annotator instruction of Amirloo et al. (arXiv 2407.02477, Table 14; CC BY 4.0). The paper does not give the
# layout of question and responses nor the parsing: ours puts them after the instruction and takes the first
# "Response 1" / "Response 2" of the verdict (Amirloo et al. §2; docs/benchmarks.md).
PAIRWISE_INSTRUCTION = (
    "The most important part of this task is to choose a response that contains less hallucination. Everything in "
    "the answer should be based on the contents of the image. You are given an image, a question, and two responses. "
    "If the context is about something practical, a helpful response is a concise response, and not one with "
    "irrelevant questions and comments. You are an expert annotator, and you rate the answer with less "
    "hallucination and more helpful information about the image as the better answer. Less hallucination means "
    "every object or attribute of the object, like color and relationship, is described accurately and as it "
    "appears in the image. If something is ambiguous in the image, the answer should avoid including any details "
    "that are not clearly visible in the image. In your response, you should generate an answer where you indicate "
    "whether Response 1 or Response 2 is better and explain the reason."
)
_PREFERENCE = re.compile(r"response\s*([12])", re.IGNORECASE)


def pairwise_prompt(question: str, first: str, second: str) -> str:
    return f"{PAIRWISE_INSTRUCTION}\n\nQuestion: {question}\nResponse 1: {first}\nResponse 2: {second}"


def parse_preference(text: str | None) -> int | None:
    """0 if the verdict prefers Response 1, 1 for Response 2 (its first mention decides), None if neither."""
    match = _PREFERENCE.search(text or "")
    return int(match.group(1)) - 1 if match else None


def judge_pairs(judge: Judge, pairs: Sequence[Mapping], seed: int = 0) -> list[int | None]:
    """Which response of each pair the judge prefers: 0 (`a`), 1 (`b`) or None (judge failure or no verdict).

    pairs[i] holds key, question, a, b and optionally image and context (ground truth for the oracle). The order
    shown to the judge is randomized per pair (seeded by (seed, key)) against position bias, and mapped back.
    """
    requests, swapped = [], []
    for p in pairs:
        swap = random.Random(derive_seed(seed, "pairwise", p["key"])).random() < 0.5
        first, second = (p["b"], p["a"]) if swap else (p["a"], p["b"])
        context = {**p.get("context", {}), "responses": [first, second]}
        requests.append(JudgeRequest(pairwise_prompt(p["question"], first, second), image=p.get("image"),
                                     task="pairwise", key=str(p["key"]), context=context))
        swapped.append(swap)
    out = []
    for reply, swap in zip(judge.complete(requests), swapped):
        shown = parse_preference(reply.text)
        out.append(None if shown is None else shown ^ int(swap))
    return out


def check_judge_calls(judge) -> None:
    """A judge all of whose calls failed leaves no score behind: an error, after the answers are written."""
    stats = getattr(judge, "stats", None) or {}
    asked = stats.get("requests", 0) - stats.get("cache_hits", 0)
    if asked and stats.get("failures", 0) == asked:
        raise ValueError(f"every one of the {asked} calls to judge {getattr(judge, 'name', '')} failed; the judged "
                         "metrics are missing (see the log for the errors)")
    if stats.get("failures"):
        logger.warning("%d of %d judge calls failed; those items are left out of the judged metrics",
                       stats["failures"], asked)
