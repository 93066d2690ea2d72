"""The benchmark registry: one spec per benchmark, so every number names the protocol version that produced it.

A spec says what the model is asked, how it generates (token budget, where it may stop), whether a judge is
needed, where the data lives in a data directory, which pure scorer turns answers into metrics, and which metrics
are the headline ones (printed with their 95 % intervals). `version` is the scorer module's version constant:
bump that constant whenever parsing or scoring changes, and every results.json records it as <name>/version.

    >>> REGISTRY["pope"].max_new_tokens, REGISTRY["mmhal"].judged
"""

from __future__ import annotations

from dataclasses import dataclass

from mmstudy.benchmarks.amber import AMBER_VERSION
from mmstudy.benchmarks.chair import CHAIR_VERSION
from mmstudy.benchmarks.headroom import HEADROOM_VERSION
from mmstudy.benchmarks.llava_bench import LLAVA_BENCH_VERSION
from mmstudy.benchmarks.mmhal import MMHAL_VERSION
from mmstudy.benchmarks.objhal import OBJHAL_VERSION
from mmstudy.benchmarks.pope import POPE_VERSION


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    version: int
    description: str
    prompt: str                    # what the model is asked
    max_new_tokens: int            # generation budget per answer (greedy decoding, KV cache)
    stop_after: str | None         # stop an answer at the first token containing this (None: EOS or budget)
    judged: bool                   # needs a judge (MMHal, MMHal-V, LLaVA-Bench)
    files: tuple[str, ...]         # data files, relative to the data directory
    scorer: str                    # the pure scoring function, module:function
    headline: tuple[str, ...]      # metric keys printed in the summary table, with their intervals
    short_answer_tokens: int = 16  # budget of the benchmark's yes/no questions (AMBER), which stop at a period
    needs: tuple[str, ...] = ()    # benchmarks whose samples this one reads; `evaluate` runs them first

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"{self.name}: max_new_tokens must be >= 1")


_SPECS = (
    BenchmarkSpec("pope", POPE_VERSION, "POPE yes/no object probing, random / popular / adversarial splits",
                  "each question's text ('Is there a {object} in the image?')", 16, ".", False,
                  ("pope/<prefix>_pope_random.json", "pope/<prefix>_pope_popular.json",
                   "pope/<prefix>_pope_adversarial.json"),
                  "mmstudy.benchmarks.pope:score_pope",
                  ("pope/random/accuracy", "pope/popular/accuracy", "pope/adversarial/accuracy", "pope/macro/f1",
                   "pope/macro/yes_ratio")),
    BenchmarkSpec("chair", CHAIR_VERSION, "CHAIR of detailed descriptions (Rohrbach et al.)",
                  "each record's prompt ('Describe the image in detail.')", 96, None, False,
                  ("caption_eval.jsonl", "synonyms.txt", "annotations/captions_val.json"),
                  "mmstudy.benchmarks.chair:chair_metrics", ("chair/chair_s", "chair/chair_i", "chair/recall")),
    BenchmarkSpec("objhal", OBJHAL_VERSION, "Object HalBench: CHAIR on long answers, response/object rates, Recall",
                  "each record's question (diversified detailed-description prompts)", 128, None, False,
                  ("objhal/obj_halbench_300_with_image.jsonl", "annotations"),
                  "mmstudy.benchmarks.objhal:score_objhal",
                  ("objhal/response_hallucination", "objhal/object_hallucination", "objhal/recall_coco")),
    BenchmarkSpec("amber", AMBER_VERSION, "AMBER generative (CHAIR, Cover, Hal, Cog) and discriminative (F1, 'No' "
                  "positive), AMBER score", "each query ('Describe this image.' / yes-no questions)", 96, None, False,
                  ("amber/annotations.json", "amber/query_all.json", "amber/relation.json", "amber/safe_words.txt"),
                  "mmstudy.benchmarks.amber:score_amber",
                  ("amber/chair", "amber/cover", "amber/hal", "amber/cog", "amber/f1", "amber/amber_score",
                   "amber/first_word/f1", "amber/first_word/amber_score")),
    BenchmarkSpec("mmhal", MMHAL_VERSION, "MMHal-Bench, 0-6 rubric from a text-only judge",
                  "each item's question", 128, None, True, ("mmhal/response_template.json",),
                  "mmstudy.benchmarks.mmhal:mmhal_metrics", ("mmhal/score", "mmhal/hallucination_rate")),
    BenchmarkSpec("mmhal_v", MMHAL_VERSION, "MMHal-V: MMHal's items and prompt, the judge also sees the image",
                  "each item's question", 128, None, True, ("mmhal/response_template.json",),
                  "mmstudy.benchmarks.mmhal:mmhal_metrics", ("mmhal_v/score", "mmhal_v/hallucination_rate")),
    BenchmarkSpec("llava_w", LLAVA_BENCH_VERSION, "LLaVA-Bench (in the wild): judge's relative score per category",
                  "each question's text", 128, None, True,
                  ("llava_bench/questions.jsonl", "llava_bench/context.jsonl", "llava_bench/answers_gpt4.jsonl"),
                  "mmstudy.benchmarks.llava_bench:score_llava_bench",
                  ("llava_w/relative_score", "llava_w/conv/relative_score", "llava_w/detail/relative_score",
                   "llava_w/complex/relative_score")),
    BenchmarkSpec("masked", CHAIR_VERSION, "descriptions with 99 % of the image tokens hidden (BDHS's setting)",
                  "'Describe the image in detail.'", 96, None, False, ("caption_eval.jsonl", "scenes.jsonl"),
                  "mmstudy.evaluation.runners:run_masked",
                  ("masked/well_formed_sentence_share", "masked/context_consistent_mention_share",
                   "masked/chair_i")),
    BenchmarkSpec("headroom", HEADROOM_VERSION, "linear probes of class presence on the image-token features: "
                  "the share of the model's POPE and CHAIR errors whose truth its own features hold",
                  "no generation: the POPE and CHAIR answers of the same evaluation", 1, None, False,
                  ("scenes.jsonl", "images/train_*.png"), "mmstudy.benchmarks.headroom:recoverable_scores",
                  ("headroom/probe_pope_accuracy", "headroom/recoverable_pope", "headroom/recoverable_chair"),
                  needs=("pope", "chair")),
)
REGISTRY: dict[str, BenchmarkSpec] = {spec.name: spec for spec in _SPECS}
