"""The world's benchmark runners, and what every runner shares (the context, batched answers, intervals):
generation here, scoring in `mmstudy.benchmarks` (pure functions).

Benchmarks on a world directory (or any data laid out the same way):
    pope     POPE random / popular / adversarial (pope/world_pope_<split>.json): accuracy, precision, recall, F1,
             true yes-ratio per split, and their macro average
    chair    CHAIR_s, CHAIR_i and object recall of detailed descriptions (caption_eval.jsonl); with a world, also
             the share of hallucinated objects that co-occur frequently with an object that is present
    masked   descriptions with 99 % of the image tokens hidden (BDHS's setting): do they stay fluent and plausible?

Every metric comes back under a stable namespaced key (`pope/adversarial/accuracy`, `chair/chair_i`, ...), and
every generated answer comes back as a sample record, so each number can be recomputed from samples.jsonl.

(`mmstudy.evaluation.evaluate` runs them by name.)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mmstudy import io
from mmstudy.benchmarks import chair as chair_lib
from mmstudy.benchmarks import pope as pope_lib
from mmstudy.benchmarks.registry import REGISTRY
from mmstudy.benchmarks.stats import bootstrap_ci
from mmstudy.evaluation.headroom import HeadroomConfig, headroom_metrics
from mmstudy.judges.base import Judge
from mmstudy.models.decoding import Decoding, decode, noise_transforms, yes_no_margins
from mmstudy.models.generation import chat_prompt, generate, sample_image_keep
from mmstudy.runs import derive_seed
from mmstudy.world.cooccurrence import cooccurrence_shares, world_cooccurrence
from mmstudy.world.scene import CONTEXTS
from mmstudy.world.text import CONTEXT_OBJECTS, is_well_formed, split_sentences

logger = logging.getLogger(__name__)

MASKED_IMAGES = 200
POPE_SPLITS = ("random", "popular", "adversarial")


def _ci_keys(metric: str, ci: dict) -> dict:
    """A bootstrap interval as flat metric keys: <metric>_ci95_low / _ci95_high."""
    return {f"{metric}_ci95_low": ci["low"], f"{metric}_ci95_high": ci["high"]}


def _ratio_of_sums(rows: np.ndarray) -> float:
    den = rows[:, 1].sum()
    return float(rows[:, 0].sum() / den) if den else 0.0


def _pope_f1(rows: np.ndarray) -> float:
    tp = np.sum(rows[:, 0] & rows[:, 1])
    return float(2 * tp / (rows[:, 0].sum() + rows[:, 1].sum())) if rows.any() else 0.0


_POPE_STATISTICS = {  # over rows (predicted yes, label yes)
    "accuracy": lambda rows: float(np.mean(rows[:, 0] == rows[:, 1])),
    "f1": _pope_f1,
    "yes_ratio": lambda rows: float(np.mean(rows[:, 0])),
}


def pope_intervals(preds: list, questions: list[dict]) -> dict:
    """95 % bootstrap intervals over questions of POPE accuracy, F1 and yes-ratio, from parsed predictions (an
    unparseable None counts as a wrong "no", as in `pope_metrics`)."""
    rows = np.array([[p == "yes", q["label"] == "yes"] for p, q in zip(preds, questions)], dtype=bool).reshape(-1, 2)
    correct = np.array([p == q["label"] for p, q in zip(preds, questions)], dtype=float)
    out = {name: bootstrap_ci(rows, stat) for name, stat in _POPE_STATISTICS.items() if name != "accuracy"}
    return {"accuracy": bootstrap_ci(correct), **out}


def chair_intervals(rows: list[dict]) -> dict:
    """95 % bootstrap intervals over captions of CHAIR_s, CHAIR_i and recall (ratios of sums), from per-caption records
    holding "hallucinated", "mentioned", "covered" and "gt"."""
    parts = {"chair_i": ("hallucinated", "mentioned"), "recall": ("covered", "gt")}
    out = {name: bootstrap_ci([[len(r[num]), len(r[den])] for r in rows], _ratio_of_sums)
           for name, (num, den) in parts.items()}
    return {"chair_s": bootstrap_ci([float(bool(r["hallucinated"])) for r in rows]), **out}


class ImageCache:
    """Images loaded once per file name, with errors naming the file that referred to them."""

    def __init__(self, image_dir: Path):
        self.image_dir = Path(image_dir)
        self._cache: dict = {}

    def get(self, name: str, where: str):
        if name not in self._cache:
            self._cache[name] = io.load_image(self.image_dir / name, where=where)
        return self._cache[name]

    def path(self, name: str) -> str:
        return str(self.image_dir / name)


@dataclass
class EvalContext:
    """What every benchmark runner gets besides the model: where the data is, the judge, and run settings."""

    data_dir: Path
    images: ImageCache
    judge: Judge | None = None
    limit: int | None = None
    batch_size: int = 64
    seed: int = 0
    progress: bool = True
    objhal_extractor: str = "rule"  # "judge": RLAIF-V's LLM extraction through `judge`
    decoding: Decoding = field(default_factory=Decoding)  # how answers are decoded (greedy, vcd, pai)
    samples: list = field(default_factory=list, repr=False)  # every sample of the benchmarks run so far
    _scenes: dict | None = field(default=None, repr=False)

    def scenes(self) -> dict[str, dict]:
        """World ground truth by image file name ({} for data that is not a world)."""
        if self._scenes is None:
            path = self.data_dir / "scenes.jsonl"
            self._scenes = ({f"{r['image_id']}.png": r for r in io.read_jsonl(path, required=("image_id",))}
                            if path.is_file() else {})
        return self._scenes

    def require_judge(self, benchmark: str) -> Judge:
        if self.judge is None:
            raise ValueError(f"{benchmark} needs a judge: pass judge=make_judge(...) (CLI: --judge oracle, "
                             f"local:MODEL_DIR or http:URL#MODEL)")
        return self.judge


def answer_questions(model, processor, ctx: EvalContext, images, questions: Sequence[str], benchmark: str,
                     image_keep=None, short: bool = False) -> list[str]:
    """Answers with the benchmark's registered generation settings (token budget, early stop), decoded by
    `ctx.decoding` (VCD's noised copy of question i drawn with the seed (ctx.seed, benchmark, i)); `short` selects
    its yes/no settings (`short_answer_tokens`, stop after the first period). With `image_keep` (image tokens
    hidden: a probe of the language prior), decoding is greedy whatever `ctx.decoding` says."""
    spec = REGISTRY[benchmark]
    prompts = [chat_prompt(processor, q) for q in questions]
    budget, stop = (spec.short_answer_tokens, ".") if short else (spec.max_new_tokens, spec.stop_after)
    if ctx.decoding.method == "greedy" or image_keep is not None:
        return generate(model, processor, images, prompts, max_new_tokens=budget, batch_size=ctx.batch_size,
                        image_keep=image_keep, stop_after=stop, progress=ctx.progress)
    noise = noise_transforms(ctx.decoding.noise_steps, [derive_seed(ctx.seed, "vcd", benchmark, short, i)
                                                        for i in range(len(prompts))])
    return decode(model, processor, images, prompts, ctx.decoding, max_new_tokens=budget,
                  batch_size=ctx.batch_size, contrast_pixels=noise, stop_after=stop, progress=ctx.progress)


def pope_split_file(pope_dir: Path, split: str) -> Path:
    """The one `<prefix>_pope_<split>.json` in `pope_dir` (world_pope_..., or the release's coco_pope_...)."""
    found = sorted(pope_dir.glob(f"*_pope_{split}.json"))
    if len(found) != 1:
        raise io.DataError(f"{pope_dir}: expected one *_pope_{split}.json (e.g. coco_pope_{split}.json), found "
                           f"{[p.name for p in found] or 'none'}")
    return found[0]


def run_pope(model, processor, ctx: EvalContext) -> tuple[dict, list[dict]]:
    """POPE on the three splits (reference answer parsing); metrics keyed pope/<split>/<metric>."""
    metrics, samples, per_split = {}, [], {}
    for split in POPE_SPLITS:
        path = pope_split_file(ctx.data_dir / "pope", split)
        questions = pope_lib.load_pope_questions(path)[:ctx.limit]
        pics = [ctx.images.get(q["image"], f"{path}, question_id {q['question_id']}") for q in questions]
        logger.info("POPE %s: %d questions", split, len(questions))
        answers = answer_questions(model, processor, ctx, pics, [q["text"] for q in questions], "pope")
        per_split[split] = pope_lib.score_pope(answers, questions)
        preds = [pope_lib.parse_yes_no(a) for a in answers]
        for name, ci in pope_intervals(preds, questions).items():
            per_split[split].update(_ci_keys(name, ci))
        for q, a, pred in zip(questions, answers, preds):
            samples.append({"benchmark": "pope", "split": split, "question_id": q["question_id"],
                            "image": q["image"], "question": q["text"], "label": q["label"], "answer": a,
                            "pred": pred})
    for split, m in {**per_split, "macro": pope_lib.macro_average(per_split)}.items():
        metrics.update({f"pope/{split}/{k}": v for k, v in m.items()})
    rows = np.array([[s["pred"] == "yes", s["label"] == "yes", POPE_SPLITS.index(s["split"])] for s in samples])
    for name, stat in _POPE_STATISTICS.items():  # macro: the mean over splits, resampling the pooled questions
        macro = lambda r, stat=stat: float(np.mean([stat(r[r[:, 2] == k][:, :2].astype(bool))  # noqa: E731
                                                    for k in np.unique(r[:, 2])]))
        metrics.update(_ci_keys(f"pope/macro/{name}", bootstrap_ci(rows.reshape(-1, 3), macro)))
    return metrics, samples


def _caption_prompts(ctx: EvalContext, limit: int | None) -> tuple[list[dict], list]:
    """The caption-evaluation prompts (first `limit`) and their images."""
    path = ctx.data_dir / "caption_eval.jsonl"
    prompts = io.read_jsonl(path, required=("image_id", "image", "prompt", "gt_objects"))[:limit]
    return prompts, [ctx.images.get(p["image"], f"{path}, image_id {p['image_id']}") for p in prompts]


def reference_objects(captions_json: Path, synonyms) -> dict[str, set[str]]:
    """Objects named in each image's COCO reference captions, keyed by file name (CHAIR's second GT source)."""
    coco = io.read_json(captions_json)
    io.check_fields(coco, ("images", "annotations"), str(captions_json))
    name_of = {im["id"]: im["file_name"] for im in coco["images"]}
    refs: dict[str, list[str]] = {}
    for i, a in enumerate(coco["annotations"]):
        io.check_fields(a, ("image_id", "caption"), f"{captions_json}, annotations[{i}]")
        refs.setdefault(name_of[a["image_id"]], []).append(a["caption"])
    return {name: chair_lib.caption_gt_objects(caps, synonyms) for name, caps in refs.items()}


CHAIR_MODES = {
    # name: (metric prefix, load_synonyms options). The reference singularizer turns "bus" into "bu" (pattern.en),
    # so the faithful scorer never counts a singular bus; "fixed" keeps vocabulary words as they are.
    "reference": ("chair", {}),
    "fixed": ("chair_fixed", {"protect_vocabulary": True}),
}


def run_chair(model, processor, ctx: EvalContext) -> tuple[dict, list[dict]]:
    """CHAIR and recall of detailed descriptions; GT = instance categories + objects of the reference captions.

    Scored twice from the same answers: faithfully to Rohrbach et al. (`chair/...`) and with the singularizer
    fixed for vocabulary words (`chair_fixed/...`); each sample keeps both sets of mentions.
    """
    world_dir = ctx.data_dir
    prompts, pics = _caption_prompts(ctx, ctx.limit)
    logger.info("CHAIR: %d descriptions", len(prompts))
    answers = answer_questions(model, processor, ctx, pics, [p["prompt"] for p in prompts], "chair")
    samples = [{"benchmark": "chair", "image_id": p["image_id"], "image": p["image"], "prompt": p["prompt"],
                "answer": a} for p, a in zip(prompts, answers)]
    metrics, cooc = {}, world_cooccurrence(world_dir)
    for mode, (prefix, options) in CHAIR_MODES.items():
        synonyms = chair_lib.load_synonyms(world_dir / "synonyms.txt", **options)
        refs = reference_objects(world_dir / "annotations" / "captions_val.json", synonyms)
        gts = [set(p["gt_objects"]) | refs.get(p["image"], set()) for p in prompts]
        for sample, d in zip(samples, chair_lib.chair_per_caption(answers, gts, synonyms)):
            sample[mode] = {k: d[k] for k in ("mentioned", "hallucinated", "gt", "covered")}
        metrics.update({f"{prefix}/{k}": v for k, v in chair_lib.chair_metrics(answers, gts, synonyms).items()})
        for name, ci in chair_intervals([smp[mode] for smp in samples]).items():
            metrics.update({f"{prefix}/{k}": v for k, v in _ci_keys(name, ci).items()})
        if cooc is not None:
            metrics.update({f"{prefix}/{k}": v for k, v in cooccurrence_shares([s[mode] for s in samples],
                                                                                 cooc).items()})
    return metrics, samples


_CONTEXT_RE = re.compile(r"\b(" + "|".join(c.name for c in CONTEXTS) + r")\b")


def run_masked(model, processor, ctx: EvalContext, rho_th: float = 0.99) -> tuple[dict, list[dict]]:
    """Descriptions with image tokens kept iff u >= rho_th (BDHS Eq. 6): fluency and plausibility of the prior.
    At most MASKED_IMAGES images (the first `limit` when smaller)."""
    world_dir, seed = ctx.data_dir, ctx.seed
    prompts, pics = _caption_prompts(ctx, min(ctx.limit or MASKED_IMAGES, MASKED_IMAGES))
    synonyms = chair_lib.load_synonyms(world_dir / "synonyms.txt", **CHAIR_MODES["fixed"][1])
    n_tokens = model.config.image_seq_length
    keep = [sample_image_keep(n_tokens, rho_th, derive_seed(seed, "masked", p["image_id"])) for p in prompts]
    logger.info("masked descriptions: %d images, rho_th=%.2f", len(prompts), rho_th)
    answers = answer_questions(model, processor, ctx, pics, [p["prompt"] for p in prompts], "masked", keep)
    scenes = {s["image_id"]: s for s in io.read_jsonl(world_dir / "scenes.jsonl", required=("image_id", "context"))}
    samples, well, n_sent, in_ctx, n_mentions, hall, degenerate = [], 0, 0, 0, 0, 0, 0
    for p, a, k in zip(prompts, answers, keep):
        sentences = split_sentences(a)
        ok = [is_well_formed(s) for s in sentences]
        mentions = [c for _, c in chair_lib.extract_objects(a, synonyms)]
        said = _CONTEXT_RE.search(a.lower())
        ctx = said.group(1) if said else scenes[p["image_id"]]["context"]
        # degenerate: a sentence repeated verbatim, or text cut off by the token limit
        degenerate += len(set(sentences)) < len(sentences) or not a.strip().endswith(".")
        well, n_sent = well + sum(ok), n_sent + len(sentences)
        in_ctx += sum(m in CONTEXT_OBJECTS[ctx] for m in mentions)
        n_mentions += len(mentions)
        hall += sum(m not in p["gt_objects"] for m in mentions)
        samples.append({"benchmark": "masked", "image_id": p["image_id"], "image": p["image"], "answer": a,
                        "kept_image_tokens": int(k.sum()), "well_formed": ok, "mentions": mentions, "context": ctx})
    n = max(1, len(prompts))
    rows = {"well_formed_sentence_share": [[sum(s["well_formed"]), len(s["well_formed"])] for s in samples],
            "context_consistent_mention_share": [[sum(m in CONTEXT_OBJECTS[s["context"]] for m in s["mentions"]),
                                                  len(s["mentions"])] for s in samples],
            "chair_i": [[sum(m not in p["gt_objects"] for m in s["mentions"]), len(s["mentions"])]
                        for s, p in zip(samples, prompts)]}
    intervals = {f"masked/{k}": bootstrap_ci(np.array(v).reshape(-1, 2), _ratio_of_sums) for k, v in rows.items()}
    metrics = {
        "masked/rho_th": rho_th, "masked/n": len(prompts),
        "masked/well_formed_sentence_share": well / max(1, n_sent),
        "masked/mentions_per_description": n_mentions / n,
        "masked/context_consistent_mention_share": in_ctx / max(1, n_mentions),
        "masked/chair_i": hall / max(1, n_mentions),
        "masked/degenerate_share": degenerate / n,
        # with (almost) no image left, greedy decoding tends to the prior's mode: the same text for many images
        "masked/distinct_answer_share": len(set(answers)) / n,
        "masked/kept_image_tokens_mean": float(np.mean([int(k.sum()) for k in keep])) if keep else 0.0,
    }
    for key, ci in intervals.items():
        metrics.update(_ci_keys(key, ci))
    return metrics, samples


def pope_margins(model, processor, data_dir: str | Path, samples: Sequence[dict], *, batch_size: int = 64,
                 progress: bool = True) -> list[dict]:
    """The model's log-odds of "yes" over "no" as its first answer token (`yes_no_margins`) on the POPE questions of
    an evaluation's `samples`: {"split", "question_id", "margin"} per question (the yes-ratio control)."""
    pope = [s for s in samples if s.get("benchmark") == "pope"]
    images = ImageCache(Path(data_dir) / "images")
    pics = [images.get(s["image"], f"POPE {s['split']} question {s['question_id']}") for s in pope]
    margins = yes_no_margins(model, processor, pics, [chat_prompt(processor, s["question"]) for s in pope],
                             batch_size=batch_size, progress=progress)
    return [{"split": s["split"], "question_id": s["question_id"], "margin": m} for s, m in zip(pope, margins)]


def run_headroom(model, processor, ctx: EvalContext) -> tuple[dict, list[dict]]:
    """Linear probes of the image-token features (`mmstudy.evaluation.headroom`) against this evaluation's POPE and
    CHAIR
    samples: probe accuracy on POPE and the shares of the model's errors the probe could recover."""
    pope = [s for s in ctx.samples if s["benchmark"] == "pope"]
    chair = [s for s in ctx.samples if s["benchmark"] == "chair"]
    found = headroom_metrics(model, processor, ctx.data_dir, pope, chair, HeadroomConfig(seed=ctx.seed),
                             progress=ctx.progress)
    return {f"headroom/{k}": v for k, v in found.items()}, []


# --- scoring answers that already exist (from any system) -------------------------------------------------------


def coco_ground_truth(coco_dir: str | Path, synonyms) -> dict[int, set[str]]:
    """CHAIR's ground truth per COCO image id: instance categories plus objects of the reference captions, from
    every `instances_*.json` and `captions_*.json` in `coco_dir` (mapped through `synonyms`)."""
    coco_dir = Path(coco_dir)
    instance_files = sorted(coco_dir.glob("instances_*.json"))
    if not instance_files:
        raise io.DataError(f"{coco_dir}: no instances_*.json (COCO instance annotations) found")
    gt: dict[int, set[str]] = {}
    for path in instance_files:
        coco = io.check_fields(io.read_json(path), ("images", "annotations", "categories"), str(path))
        names = {c["id"]: c["name"] for c in coco["categories"]}
        for im in coco["images"]:
            gt.setdefault(im["id"], set())
        for i, a in enumerate(coco["annotations"]):
            io.check_fields(a, ("image_id", "category_id"), f"{path}, annotations[{i}]")
            mapped = synonyms.to_class.get(names[a["category_id"]], names[a["category_id"]])
            gt.setdefault(a["image_id"], set()).add(mapped)
    for path in sorted(coco_dir.glob("captions_*.json")):
        coco = io.check_fields(io.read_json(path), ("annotations",), str(path))
        for i, a in enumerate(coco["annotations"]):
            io.check_fields(a, ("image_id", "caption"), f"{path}, annotations[{i}]")
            gt.setdefault(a["image_id"], set()).update(chair_lib.caption_gt_objects([a["caption"]], synonyms))
    return gt


