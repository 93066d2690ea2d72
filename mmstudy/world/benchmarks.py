"""World editions of the judged and long-answer benchmarks, in each benchmark's released file format.

Built from the world's held-out (val) scenes, so one evaluator reads a world edition and the real release alike:

    mmhal/response_template.json      MMHal-Bench: 8 question types x 12 (2 each in the smoke profile)
    llava_bench/questions.jsonl       LLaVA-Bench (in the wild): conv / detail / complex questions,
    llava_bench/context.jsonl           with image captions and reference answers
    llava_bench/answers_gpt4.jsonl
    amber/...                         AMBER: generative truth / hallu annotations and yes/no questions
    objhal/...                        Object HalBench: detailed-description prompts over val images

The world's version of each question type keeps its intent where the world allows (an MMHal "adversarial"
question presupposes an absent object, preferably the in-context partner of a present one; "holistic" asks for a
description), and uses the world's closed vocabulary. Every standard answer is exact ground truth.

    >>> write_benchmark_editions("world")   # also run by `mmstudy world`
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import numpy as np

from mmstudy import io
from mmstudy.runs import derive_seed
from mmstudy.world.layout import COCO_ID_OFFSET, load_scenes, load_world_info
from mmstudy.world.scene import CLASSES, POSITIONS, Scene, WorldSpec
from mmstudy.world.text import (
    CONTEXT_OBJECTS,
    DESCRIBE_PROMPTS,
    NUMBERS,
    PARTNERS,
    POS_PHRASE,
    article,
    context_qa,
    count_qa,
    likely_absent,
    plural_of,
    size_qa,
    what_at_qa,
    where_qa,
)

logger = logging.getLogger(__name__)

MMHAL_TYPES = ("attribute", "adversarial", "comparison", "counting", "relation", "environment", "holistic",
               "other")
HOLISTIC_PROMPT = "Describe this image."
DETAIL_PROMPT = "Describe the image in detail."
COMPLEX_PROMPT = "What kind of place is this, and what in the image tells you so?"


def _rng(seed: int, *parts) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, "benchmark", *parts))


def full_description(scene: Scene) -> str:
    """The exact ground truth as text: context, then every object with its size and position."""
    sentences = [f"This is {article(scene.context)} {scene.context} scene."]
    for o in scene.objects:
        sentences.append(f"There is {article(o.size)} {o.size} {o.name} {POS_PHRASE[o.position]}.")
    return " ".join(sentences)


def _comparison_qa(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    objs = scene.objects
    if len(objs) < 2 or objs[0].name == objs[1].name:
        return size_qa(scene, objs[0].name)
    a, b = (objs[i] for i in sorted(rng.choice(len(objs), size=2, replace=False)))
    if a.name == b.name:
        return size_qa(scene, a.name)
    q = f"Is the {a.name} larger than the {b.name}?"
    if a.size == b.size:
        return q, f"No, the {a.name} and the {b.name} are both {a.size}."
    if a.size == "large":
        return q, f"Yes, the {a.name} is large and the {b.name} is small."
    return q, f"No, the {a.name} is small and the {b.name} is large."


def mmhal_question(scene: Scene, qtype: str, rng: np.random.Generator) -> tuple[str, str]:
    """(question, standard answer) of one MMHal question type about `scene`."""
    present = scene.classes()
    pick = str(rng.choice(present))
    if qtype == "attribute":
        return size_qa(scene, pick)
    if qtype == "adversarial":
        absent = likely_absent(scene, rng, context_first=False)
        return f"Where is the {absent} in the image?", f"There is no {absent} in the image."
    if qtype == "comparison":
        return _comparison_qa(scene, rng)
    if qtype == "counting":
        return count_qa(scene, pick)
    if qtype == "relation":
        return where_qa(scene, pick)
    if qtype == "environment":
        return context_qa(scene)
    if qtype == "holistic":
        return HOLISTIC_PROMPT, full_description(scene)
    if qtype == "other":
        return what_at_qa(scene, int(rng.integers(len(POSITIONS))))
    raise ValueError(f"unknown MMHal question type {qtype!r}")


def mmhal_items(scenes: list[Scene], per_type: int, seed: int) -> list[dict]:
    """MMHal items in the released layout and order (item i has type i mod 8), one scene per item."""
    if len(scenes) < per_type * len(MMHAL_TYPES):
        raise ValueError(f"MMHal world edition needs {per_type * len(MMHAL_TYPES)} scenes, got {len(scenes)}")
    items = []
    for i in range(per_type * len(MMHAL_TYPES)):
        scene, qtype = scenes[i], MMHAL_TYPES[i % len(MMHAL_TYPES)]
        question, answer = mmhal_question(scene, qtype, _rng(seed, "mmhal", i))
        items.append({"question_type": qtype, "question_topic": f"World/{scene.context}",
                      "image_id": scene.image_id, "image_src": f"{scene.image_id}.png",
                      "image_content": [c[0].upper() + c[1:] for c in scene.classes()],
                      "question": question, "gt_answer": answer, "model_answer": ""})
    return items


def _complex_answer(scene: Scene) -> str:
    names = scene.classes()
    listed = names[0] if len(names) == 1 else ", the ".join(names[:-1]) + f" and the {names[-1]}"
    return (f"This is {article(scene.context)} {scene.context}. The {listed} "
            f"{'is' if len(names) == 1 else 'are'} what one finds in {article(scene.context)} {scene.context}.")


def llava_bench_files(scenes: list[Scene], seed: int) -> dict[str, list[dict]]:
    """LLaVA-Bench (in the wild) files: per image a conversation question and a detailed description, and for
    every other image a "complex" reasoning question (60 questions for 24 images, as the release)."""
    questions, context, answers = [], [], []
    for i, scene in enumerate(scenes):
        rng = _rng(seed, "llava_bench", i)
        image = f"{scene.image_id}.png"
        context.append({"id": scene.image_id, "image": image, "caption": full_description(scene)})
        name = str(rng.choice(scene.classes()))
        conv = count_qa(scene, name) if rng.random() < 0.5 else where_qa(scene, name)
        asked = [("conv", conv), ("detail", (DETAIL_PROMPT, full_description(scene)))]
        if i % 2 == 0:
            asked.append(("complex", (COMPLEX_PROMPT, _complex_answer(scene))))
        for category, (q, a) in asked:
            qid = len(questions)
            questions.append({"question_id": qid, "image": image, "text": q, "category": category})
            answers.append({"question_id": qid, "text": a, "answer_id": f"world-{qid}", "model_id": "world-truth",
                            "metadata": {}})
    return {"questions.jsonl": questions, "context.jsonl": context, "answers_gpt4.jsonl": answers}


def objhal_questions(world_dir: Path, scenes: list[Scene]) -> list[dict]:
    """Object HalBench lines (image_id = the image's COCO id in annotations/, question, base64 PNG "image",
    org_idx), the description prompts cycling through the world's phrasings, as RLAIF-V's 8 diversified ones."""
    lines = []
    for i, scene in enumerate(scenes):
        data = (world_dir / "images" / f"{scene.image_id}.png").read_bytes()
        lines.append({"image_id": COCO_ID_OFFSET["val"] + i + 1, "org_idx": i,
                      "question": DESCRIBE_PROMPTS[i % len(DESCRIBE_PROMPTS)],
                      "image": base64.b64encode(data).decode("ascii")})
    return lines


AMBER_GENERATIVE_QUERY = "Describe this image."


def _amber_questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(annotation type, query, truth) yes/no questions of one scene: existence (an absent object, truth "no",
    as every existence item of the release), size as the attribute state, count as the attribute number, and
    a vertical relation between two objects in different rows (the world has no actions)."""
    present = scene.classes()
    absent = likely_absent(scene, rng, context_first=False)
    out = [("discriminative-hallucination", f"Is there {article(absent)} {absent} in this image?", "no")]
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    size = obj.size if rng.random() < 0.5 else ("small" if obj.size == "large" else "large")
    out.append(("discriminative-attribute-state", f"Is the {obj.name} {size} in this image?",
                "yes" if size == obj.size else "no"))
    name = str(rng.choice(present))
    count = sum(o.name == name for o in scene.objects)
    asked = count if rng.random() < 0.5 else int(rng.choice([n for n in NUMBERS if n != count and n > 1]))
    out.append(("discriminative-attribute-number", f"Are there {NUMBERS[asked]} {plural_of(name)} in this image?"
                if asked > 1 else f"Is there one {name} in this image?", "yes" if asked == count else "no"))
    rows = [(o.cell // 3, o.name) for o in scene.objects]
    pairs = [(a, b) for ra, a in rows for rb, b in rows if ra != rb and a != b]
    if pairs:
        a, b = pairs[int(rng.integers(len(pairs)))]
        above = min(r for r, n in rows if n == a) < min(r for r, n in rows if n == b)
        out.append(("discriminative-relation", f"Is the {a} above the {b} in this image?", "yes" if above else "no"))
    return out


def amber_files(scenes: list[Scene], seed: int) -> dict:
    """AMBER's released files for the world: annotations.json, query_all.json (generative ids first, then the
    yes/no questions, as the release; `hallu` = the absent partners of present objects, then the other absent
    objects of the scene's context: what the co-occurrence prior suggests), relation.json (each class with its
    synonyms as associated words) and an empty safe_words.txt (no word of the world is generic enough to be safe)."""
    annotations, queries = [], []
    for scene in scenes:
        present = scene.classes()
        likely = [PARTNERS.get(p, "") for p in present] + sorted(CONTEXT_OBJECTS[scene.context])
        hallu = [c for c in dict.fromkeys(likely) if c and c not in present]  # partners first, then the context
        annotations.append({"id": len(annotations) + 1, "type": "generative", "truth": present, "hallu": hallu})
        queries.append({"id": len(queries) + 1, "image": f"{scene.image_id}.png", "query": AMBER_GENERATIVE_QUERY})
    for i, scene in enumerate(scenes):
        for kind, query, truth in _amber_questions(scene, _rng(seed, "amber", i)):
            annotations.append({"id": len(annotations) + 1, "type": kind, "truth": truth})
            queries.append({"id": len(queries) + 1, "image": f"{scene.image_id}.png", "query": query})
    relation = {c.name: list(c.synonyms) for c in CLASSES}
    return {"annotations.json": annotations, "query_all.json": queries, "relation.json": relation}


def write_benchmark_editions(world_dir: str | Path, spec: WorldSpec | None = None, seed: int | None = None) -> dict:
    """Write every world edition into `world_dir` from its val scenes; returns {benchmark: item count}."""
    world_dir = Path(world_dir)
    info = load_world_info(world_dir)
    spec = spec or WorldSpec(**info["spec"])
    seed = info["seed"] if seed is None else seed
    val = load_scenes(world_dir, split="val")
    n = spec.judged_images
    items = mmhal_items(val, per_type=n // 2, seed=seed)
    io.write_json(world_dir / "mmhal" / "response_template.json", items)
    bench = llava_bench_files(val[:n], seed)
    for name, records in bench.items():
        io.write_jsonl(world_dir / "llava_bench" / name, records)
    objhal = objhal_questions(world_dir, val[:spec.objhal_images])
    io.write_jsonl(world_dir / "objhal" / "obj_halbench_300_with_image.jsonl", objhal)
    amber = amber_files(val[:spec.amber_images], seed)
    for name, data in amber.items():
        io.write_json(world_dir / "amber" / name, data)
    io.write_text(world_dir / "amber" / "safe_words.txt", "")
    counts = {"mmhal": len(items), "llava_w": len(bench["questions.jsonl"]), "objhal": len(objhal),
              "amber": len(amber["query_all.json"])}
    logger.info("wrote benchmark editions: %s", counts)
    return counts


