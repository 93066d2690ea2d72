"""World editions of the ranking and correction datasets, and the data-desiderata variants of the paper's Table 4.

The POVID-like (constructed corruption) edition lives in `mmstudy.editions.povid`. The others start from the same
material as VLFeedback: for each prompt, several completions from "models of different strength", rated by an
annotator. On the world:

    prompts      novel: fresh scenes never seen in training, with prompts drawn like the SFT data's first turns;
                 sft: the first turns of the training split's LLaVA-Instruct records (images and prompts the
                 model was fine-tuned on; the paper's "LLaVA prompts")
    responders   the reference answer (the world's y+: the strongest "model", GPT-4V's role), and models sampled
                 at a temperature, optionally with a share rho_th of their image tokens masked (a model that sees
                 less of the image and leans on its prior; BDHS's masking). By default one checkpoint at three
                 strengths; any checkpoints can be named instead.
    ratings      the oracle, written as VLFeedback's annotations: "Visual Faithfulness" = 5 - (false claims,
                 at most 4), "Helpfulness" = 1 + round(4 x coverage of the reference's facts)

Editions (`build_edition`), each a list of preference records in mmstudy's schema:

    ranking             VLFeedback-like: a best-rated completion against a lower-rated one (VLFeedback's
                        converter rule, `converters.vlfeedback.best_vs_lower`); the kinds of the false claims only
                        the rejected makes go into provenance["error_kinds"]
    correction          RLHF-V-like: a model completion with a false claim as rejected, its correction as chosen
                        (`correct`: wrong position / size / count / context / yes-no fixed to the truth, a sentence
                        naming an absent object dropped)
    ranked_corrupted    Table 4 "+ corrupting strategy": the ranking's chosen, and its rule-based corruption
                        (`mmstudy.editions.povid.corrupt`) as rejected
    sft_prompts         Table 4 "LLaVA prompts": ranked_corrupted on the sft prompts
    reference_chosen    Table 4 "GPT-4V responses only": the reference answer, and its corruption
    model_chosen        Table 4 "LLaVA responses only": the best-rated model completion, and its corruption
    oracle              the positive control: the best-rated model completion against the worst-rated one (strictly
                        lower), model completions only; with `own_responders`, k samples of one model, so the
                        pairs are that model's own outputs ranked by the exact oracle

    >>> pairs, rows = world_editions(["ranking", "correction"], "world", default_responders("models/base"), n=1000)
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mmstudy import io
from mmstudy.benchmarks import chair as chair_lib
from mmstudy.converters.vlfeedback import best_vs_lower
from mmstudy.data.llava import conversation_turns, load_llava_instruct
from mmstudy.editions.povid import POSITION_PHRASE_RE, corrupt, flip_yes_no, fresh_records
from mmstudy.judges.oracle import SIZES, check_answer, facts, world_synonyms
from mmstudy.models.generation import chat_prompt, generate, image_token_counts, sample_image_keep
from mmstudy.models.llava import load_llava
from mmstudy.runs import derive_seed
from mmstudy.world.layout import load_scenes
from mmstudy.world.scene import Scene
from mmstudy.world.text import NUMBERS, POS_PHRASE, split_sentences

logger = logging.getLogger(__name__)

REFERENCE = "reference"
EDITIONS = ("ranking", "correction", "ranked_corrupted", "sft_prompts", "reference_chosen", "model_chosen", "oracle")
PROMPT_SOURCE = {"sft_prompts": "sft"}   # every other edition uses novel prompts


@dataclass(frozen=True)
class Responder:
    """One source of completions: the world's reference answer (`model` None), or a model directory sampled at
    `temperature` with a share `rho_th` of its image tokens masked (0: the whole image)."""

    name: str
    model: str | None = None
    temperature: float = 1.0
    rho_th: float = 0.0

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"responder name {self.name!r}: use letters, digits, '_', '.' or '-'")
        if self.temperature <= 0:
            raise ValueError(f"responder {self.name!r}: temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.rho_th < 1.0:
            raise ValueError(f"responder {self.name!r}: rho_th must be in [0, 1), got {self.rho_th}")


def parse_responder(spec: str) -> Responder:
    """"NAME=reference", or "NAME=MODEL_DIR[,t=TEMPERATURE][,rho=RHO_TH]" (e.g. "weak=models/base,t=1.3")."""
    name, sep, rest = spec.partition("=")
    if not sep or not rest:
        raise ValueError(f"responder {spec!r}: expected NAME=reference or NAME=MODEL_DIR[,t=T][,rho=R]")
    if rest == REFERENCE:
        return Responder(name)
    model, *options = rest.split(",")
    values = {}
    for option in options:
        key, _, value = option.partition("=")
        if key not in ("t", "rho"):
            raise ValueError(f"responder {spec!r}: unknown option {key!r} (t, rho)")
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f"responder {spec!r}: {key}={value!r} is not a number") from None
    return Responder(name, model, values.get("t", 1.0), values.get("rho", 0.0))


def default_responders(model_dir: str | Path) -> list[Responder]:
    """VLFeedback's four completions per prompt, on the world: the reference and one checkpoint at three
    strengths (sampled at T 0.7; at T 1.3; at T 0.7 seeing a tenth of its image tokens)."""
    model = str(model_dir)
    return [Responder(REFERENCE), Responder("model_t0.7", model, 0.7), Responder("model_t1.3", model, 1.3),
            Responder("model_masked", model, 0.7, rho_th=0.9)]


def own_responders(model_dir: str | Path, k: int = 4, temperature: float = 1.0) -> list[Responder]:
    """k samples of one checkpoint at `temperature` (the positive control's completions: the model's own)."""
    if k < 2:
        raise ValueError(f"own_responders needs k >= 2 samples to rank, got {k}")
    return [Responder(f"own{i}", str(model_dir), temperature) for i in range(k)]


def edition_prompts(world_dir: str | Path, source: str, n: int, seed: int) -> tuple[list[dict], dict[str, Scene]]:
    """n prompts as {"id", "image", "prompt", "reference"} (the first turn of a LLaVA-Instruct-style record) and the
    scenes by image name: from `source` "novel" (fresh scenes, `mmstudy.editions.povid.fresh_records`) or "sft" (a
    seeded
    choice of the training records)."""
    world_dir = Path(world_dir)
    if source == "novel":
        records, scenes = fresh_records(world_dir, n, seed)
    elif source == "sft":
        records = load_llava_instruct(world_dir / "llava_instruct_train.json")
        order = np.random.default_rng(derive_seed(seed, "sft_prompts")).permutation(len(records))[:n]
        records = [records[int(i)] for i in order]
        scenes = {f"{s.image_id}.png": s for s in load_scenes(world_dir, "train")}
    else:
        raise ValueError(f"unknown prompt source {source!r} (novel, sft)")
    prompts = []
    for r in records:
        prompt, reference = conversation_turns(r)[0]
        prompts.append({"id": str(r["id"]), "image": r["image"], "prompt": prompt, "reference": reference})
    return prompts, scenes


def sample_completions(models: Mapping[str, tuple], responders: Sequence[Responder], prompts: Sequence[dict],
                       image_root: str | Path, seed: int = 0, max_new_tokens: int = 96, batch_size: int = 64,
                       progress: bool = True) -> list[dict]:
    """One row per prompt: the prompt's fields and "completions", one {"model", "response"} per responder (in
    `responders` order). `models` maps each responder's model directory to its loaded (model, processor)."""
    images = [io.load_image(Path(image_root) / p["image"], where=f"prompt {p['id']!r}") for p in prompts]
    by_responder = {}
    for resp in responders:
        if resp.model is None:
            by_responder[resp.name] = [p["reference"] for p in prompts]
            continue
        model, processor = models[resp.model]
        texts = [chat_prompt(processor, p["prompt"]) for p in prompts]
        keep = None
        if resp.rho_th > 0:
            counts = image_token_counts(processor, images, texts)
            keep = [sample_image_keep(c, resp.rho_th, derive_seed(seed, "keep", resp.name, p["id"]))
                    for c, p in zip(counts, prompts)]
        logger.info("sampling %d completions from %s", len(prompts), resp)
        by_responder[resp.name] = generate(model, processor, images, texts, max_new_tokens=max_new_tokens,
                                           batch_size=batch_size, image_keep=keep, do_sample=True,
                                           temperature=resp.temperature, seed=derive_seed(seed, "sample", resp.name),
                                           progress=progress)
    return [{**p, "completions": [{"model": r.name, "response": by_responder[r.name][i]} for r in responders]}
            for i, p in enumerate(prompts)]


def oracle_annotations(response: str, scene: Scene, reference: str) -> dict:
    """VLFeedback-style annotations of one completion by the oracle (see the module docstring)."""
    check = check_answer(response, scene, reference)
    found = "; ".join(check.hallucinations) or "no false claim"
    return {"Visual Faithfulness": {"Rating": str(5 - min(4, len(check.hallucinations))), "Rationale": found},
            "Helpfulness": {"Rating": str(1 + round(4 * check.coverage)),
                            "Rationale": f"covers {check.coverage:.0%} of the reference's facts"}}


def error_kinds(chosen: str, rejected: str, scene: Scene, reference: str) -> list[str]:
    """The kinds (`review.KINDS`) of the false claims the rejected response makes and the chosen one does not:
    what a ranked pair teaches, exactly (the review's exact kinds of a ranked pair)."""
    made = check_answer(chosen, scene, reference).hallucinations
    found = check_answer(rejected, scene, reference)
    return sorted({k for k, claim in zip(found.kinds, found.hallucinations) if claim not in made})


def rate_completions(rows: Sequence[dict], scenes: Mapping[str, Scene]) -> list[dict]:
    """The rows with each completion's oracle annotations and mean rating ("score")."""
    out = []
    for row in rows:
        scene = scenes[row["image"]]
        completions = []
        for c in row["completions"]:
            notes = oracle_annotations(c["response"], scene, row["reference"])
            score = sum(int(n["Rating"]) for n in notes.values()) / len(notes)
            completions.append({**c, "annotations": notes, "score": score})
        out.append({**row, "completions": completions})
    return out


def vlfeedback_rows(rows: Sequence[dict]) -> list[dict]:
    """Rated rows in VLFeedback's released format (readable by `mmstudy convert vlfeedback`)."""
    return [{"id": r["id"], "prompt": r["prompt"], "img_path": r["image"],
             "models": [c["model"] for c in r["completions"]],
             "completions": [{k: c[k] for k in ("annotations", "model", "response")} for c in r["completions"]]}
            for r in rows]


# ---------------------------------------------------------------- correction (RLHF-V-like)


def _fix_sentence(sentence: str, scene: Scene) -> tuple[str, list[str]] | None:
    """A sentence about exactly one present class with its wrong position, size, count or context set to the
    truth, and the fixes made; None when that does not make it true."""
    classes = {cls for _, cls in chair_lib.extract_objects(sentence, world_synonyms())}
    out, fixes = sentence, []
    if len(classes) == 1:
        (cls,) = classes
        objs = [o for o in scene.objects if o.name == cls]
        if not objs:
            return None
        phrases = POSITION_PHRASE_RE.findall(out)
        if len(phrases) == 1 and phrases[0] not in {POS_PHRASE[o.position] for o in objs}:
            out, fixes = out.replace(phrases[0], POS_PHRASE[objs[0].position], 1), fixes + ["fix_position"]
        sizes = [w for w in re.findall(r"[a-z]+", out.lower()) if w in SIZES]
        if len(sizes) == 1 and sizes[0] not in {o.size for o in objs}:
            out = re.sub(rf"\b{sizes[0]}\b", objs[0].size, out, count=1, flags=re.IGNORECASE)
            fixes.append("fix_size")
        counts = [w for w in re.findall(r"[a-z]+", out.lower()) if w in NUMBERS.values() and w != "one"]
        if len(counts) == 1 and len(objs) > 1 and counts[0] != NUMBERS.get(len(objs)):
            out = re.sub(rf"\b{counts[0]}\b", NUMBERS[len(objs)], out, count=1, flags=re.IGNORECASE)
            fixes.append("fix_count")
    for kind, context in sorted(facts(out)):
        if kind == "ctx" and context != scene.context:
            out, fixes = re.sub(rf"\b{context}\b", scene.context, out), fixes + ["fix_context"]
    return (out, fixes) if fixes and not check_answer(out, scene).hallucinated else None


def correct(response: str, scene: Scene, reference: str) -> tuple[str, list[str]] | None:
    """The RLHF-V-style correction of a response with false claims, and the edits made: a contradicted yes/no
    flipped; each false sentence fixed (`_fix_sentence`) or, when it names an absent object or cannot be fixed,
    dropped ("drop_sentence"). None when the response is already right or nothing true would remain."""
    if not check_answer(response, scene, reference).hallucinated:
        return None
    flipped = flip_yes_no(response)
    if flipped is not None and not check_answer(flipped, scene, reference).hallucinated:
        return flipped, ["yes/no"]
    kept, edits = [], []
    for sentence in split_sentences(response):
        if not check_answer(sentence, scene).hallucinated:
            kept.append(sentence)
        elif (fixed := _fix_sentence(sentence, scene)) is not None:
            kept.append(fixed[0])
            edits += fixed[1]
        else:
            edits.append("drop_sentence")
    corrected = " ".join(kept)
    if not kept or not edits or check_answer(corrected, scene, reference).hallucinated:
        return None
    return corrected, edits


# ---------------------------------------------------------------- editions


def _record(kind: str, row: dict, chosen: str, rejected: str, seed: int, **provenance) -> dict:
    return {"id": f"{row['id']}_{kind}", "image": row["image"], "prompt": row["prompt"], "chosen": chosen,
            "rejected": rejected, "source": f"world_{kind}",
            "provenance": {"generator": f"world_{kind}", "seed": seed, **provenance}}


def _scored(row: dict, models: bool = False) -> list[tuple]:
    return [(c["score"], c["response"], c["model"]) for c in row["completions"]
            if c["response"].strip() and not (models and c["model"] == REFERENCE)]


def _corrupted(kind: str, row: dict, chosen: tuple, scene: Scene, seed: int) -> dict | None:
    made = corrupt(chosen[1], scene, np.random.default_rng(derive_seed(seed, "corrupt", row["id"])))
    if made is None:
        return None
    return _record(kind, row, chosen[1], made[0], seed, edits=made[1], chosen_model=chosen[2],
                   chosen_score=chosen[0])


def edition_pair(kind: str, row: dict, scene: Scene, seed: int) -> dict | None:
    """One row's pair of edition `kind` (see the module docstring), or None when the row gives none."""
    rng = random.Random(derive_seed(seed, kind, row["id"]))
    if kind == "ranking":
        picked = best_vs_lower(_scored(row), rng) if len(_scored(row)) >= 2 else None
        if picked is None:
            return None
        (cs, chosen, cm), (rs, rejected, rm) = picked
        return {**_record(kind, row, chosen, rejected, seed, chosen_model=cm, rejected_model=rm,
                          rule="best_mean_rating_vs_seeded_lower",
                          error_kinds=error_kinds(chosen, rejected, scene, row["reference"])),
                "chosen_score": cs, "rejected_score": rs}
    if kind == "oracle":
        scored = _scored(row, models=True)
        if len(scored) < 2 or min(c[0] for c in scored) == max(c[0] for c in scored):
            return None
        best, worst = (rng.choice([c for c in scored if c[0] == f(c[0] for c in scored)]) for f in (max, min))
        return {**_record(kind, row, best[1], worst[1], seed, chosen_model=best[2], rejected_model=worst[2],
                          rule="best_vs_worst_oracle_rating",
                          error_kinds=error_kinds(best[1], worst[1], scene, row["reference"])),
                "chosen_score": best[0], "rejected_score": worst[0]}
    if kind == "correction":
        wrong = [c for c in row["completions"] if c["model"] != REFERENCE
                 and check_answer(c["response"], scene, row["reference"]).hallucinated]
        for c in rng.sample(wrong, len(wrong)):
            fixed = correct(c["response"], scene, row["reference"])
            if fixed is not None:
                return _record(kind, row, fixed[0], c["response"], seed, edits=fixed[1], rejected_model=c["model"])
        return None
    if kind in ("ranked_corrupted", "sft_prompts", "reference_chosen", "model_chosen"):
        if kind == "reference_chosen":
            chosen = next((c for c in _scored(row) if c[2] == REFERENCE), None)
        else:
            scored = _scored(row, models=kind == "model_chosen")
            best = max((c[0] for c in scored), default=None)
            chosen = rng.choice([c for c in scored if c[0] == best]) if scored else None
        return None if chosen is None else _corrupted(kind, row, chosen, scene, seed)
    raise ValueError(f"unknown edition {kind!r} (one of {', '.join(EDITIONS)})")


def build_edition(kind: str, rows: Sequence[dict], scenes: Mapping[str, Scene], seed: int = 0) -> list[dict]:
    """Edition `kind`'s preference records from rated rows (`rate_completions`), at most one per row."""
    if kind not in EDITIONS:
        raise ValueError(f"unknown edition {kind!r} (one of {', '.join(EDITIONS)})")
    pairs = [p for row in rows if (p := edition_pair(kind, row, scenes[row["image"]], seed)) is not None]
    logger.info("world %s edition: %d pairs from %d prompts", kind, len(pairs), len(rows))
    return pairs


def load_models(responders: Sequence[Responder]) -> dict[str, tuple]:
    """Each responder's model directory, loaded once: {dir: (model, processor)}."""
    return {d: load_llava(d) for d in dict.fromkeys(r.model for r in responders if r.model is not None)}


def world_editions(kinds: Sequence[str], world_dir: str | Path, responders: Sequence[Responder], n: int,
                   seed: int = 0, max_new_tokens: int = 96, batch_size: int = 64,
                   progress: bool = True) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """Editions `kinds` on n prompts each: ({kind: pairs}, {prompt source: rated rows}). The responders' models
    are loaded once, and editions with the same prompt source share one set of sampled completions."""
    unknown = [k for k in kinds if k not in EDITIONS]
    if unknown or not kinds:
        raise ValueError(f"unknown edition(s) {unknown or kinds!r} (one of {', '.join(EDITIONS)})")
    models = load_models(responders)
    pairs, rows = {}, {}
    for source in dict.fromkeys(PROMPT_SOURCE.get(k, "novel") for k in kinds):
        prompts, scenes = edition_prompts(world_dir, source, n, seed)
        sampled = sample_completions(models, responders, prompts, Path(world_dir) / "images", seed, max_new_tokens,
                                     batch_size, progress)
        rows[source] = rate_completions(sampled, scenes)
        for kind in (k for k in kinds if PROMPT_SOURCE.get(k, "novel") == source):
            pairs[kind] = build_edition(kind, rows[source], scenes, seed)
    return pairs, rows
