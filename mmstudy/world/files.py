"""Write a world to disk in the formats real data comes in, and read it back.

Layout of a world directory (every file deterministic for a seed, byte for byte):

    world.json                    spec, seed, classes, contexts, co-occurrence statistics, file index
    synonyms.txt                  CHAIR synonym list, same format as the COCO one
    scenes.jsonl                  full ground truth of every image (objects, boxes, sizes, visibility, context)
    images/<split>_NNNNNN.png     the images (POPE / LLaVA `image` fields are relative to images/)
    llava_instruct_<split>.json   LLaVA-Instruct-150K format conversations
    text_only.json                LLaVA-format text-only conversations (no image): the language-model corpus
    annotations/instances_<split>.json, annotations/captions_<split>.json   COCO format
    pope/world_pope_{random,popular,adversarial}.json                       POPE JSON lines (val images)
    caption_eval.jsonl            caption-evaluation prompts with ground-truth objects (val images)
    mmhal/, llava_bench/, amber/, objhal/   world editions of those benchmarks (`mmstudy.world.benchmarks`)

A selection split (`write_selection_split`: new scenes, laid out like a world for POPE and CHAIR) is what
recipes are chosen on (`mmstudy.study.recipe`), never the benchmark items.

    >>> summary = write_world("world", WorldSpec.for_profile("smoke"), seed=0)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mmstudy import io
from mmstudy.benchmarks.pope import build_pope_questions
from mmstudy.progress import progress_bar
from mmstudy.world.benchmarks import write_benchmark_editions
from mmstudy.world.cooccurrence import cooccurrence
from mmstudy.world.layout import COCO_ID_OFFSET, POPE_SPLITS, SELECTION_SPLIT, load_world_info
from mmstudy.world.scene import (
    CLASS_INDEX,
    CLASSES,
    CONTEXTS,
    WORLD_VERSION,
    Scene,
    WorldSpec,
    render_scene,
    sample_scene,
    scene_rng,
)
from mmstudy.world.text import (
    CAPTION_EVAL_PROMPT,
    reference_caption,
    sample_conversation,
    symbolic_scene,
    synonyms_text,
)

logger = logging.getLogger(__name__)

CONVERSATION_MIX = {"describe": 0.35, "exist": 0.35, "qa": 0.30}   # SFT records
TEXT_ONLY_MIX = {"describe": 0.7, "exist": 0.1, "qa": 0.2}        # language-model corpus, plain
SYMBOLIC_MIX = {"describe": 0.2, "exist": 0.6, "qa": 0.2}         # language-model corpus, symbolic scenes
RECORDS_PER_IMAGE = 2


def pick_kind(mix: dict, rng: np.random.Generator) -> str:
    kinds = list(mix)
    return kinds[int(rng.choice(len(kinds), p=np.array(list(mix.values()))))]


def _coco_image(scene: Scene, spec: WorldSpec, index: int) -> dict:
    return {"id": COCO_ID_OFFSET[scene.split] + index + 1, "file_name": f"{scene.image_id}.png",
            "width": spec.image_size, "height": spec.image_size}


def _coco_files(scenes: list[Scene], spec: WorldSpec, seed: int) -> tuple[dict, dict]:
    categories = [{"id": i + 1, "name": c.name, "supercategory": next(
        (ctx.name for ctx in CONTEXTS if any(c.name in p[:2] for p in ctx.pairs)), "object")}
        for i, c in enumerate(CLASSES)]
    images, anns, caps = [], [], []
    for i, s in enumerate(scenes):
        img = _coco_image(s, spec, i)
        images.append(img)
        for o in s.objects:
            x, y, w, h = o.bbox
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": CLASS_INDEX[o.name] + 1,
                         "bbox": [x, y, w, h], "area": round(w * h, 2), "iscrowd": 0,
                         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        rng = scene_rng(seed, s.split, i, "captions")
        for _ in range(spec.references_per_image):
            caps.append({"id": len(caps) + 1, "image_id": img["id"], "caption": reference_caption(s, rng)})
    info = {"description": "mmstudy synthetic world", "version": str(WORLD_VERSION)}
    instances = {"info": info, "licenses": [], "images": images, "annotations": anns, "categories": categories}
    captions = {"info": info, "licenses": [], "images": images, "annotations": caps}
    return instances, captions


def _conversations(scenes: list[Scene], seed: int, per_scene: int, spec: WorldSpec) -> list[dict]:
    """LLaVA-Instruct records about rendered scenes (the image is the scene's PNG), with the writer's prior-driven
    errors of `spec` (`p_drift`, `p_prior_yes`), as instruction data written without looking closely has."""
    records = []
    for i, s in enumerate(scenes):
        rng = scene_rng(seed, s.split, i, "conversations")
        for k in range(per_scene):
            conv = sample_conversation(s, rng, pick_kind(CONVERSATION_MIX, rng), spec.p_drift, spec.p_prior_yes)
            records.append({"id": f"{s.image_id}_{k}", "image": f"{s.image_id}.png", "conversations": conv})
    return records


def _text_conversations(scenes: list[Scene], seed: int, spec: WorldSpec) -> list[dict]:
    """Text-only records (no image). A share `spec.p_symbolic` states the scene as words where the image would
    be (`symbolic_scene`): text in which the LM learns to look things up, as an LLM does before it meets images."""
    records = []
    for i, s in enumerate(scenes):
        rng = scene_rng(seed, s.split, i, "conversations")
        symbolic = rng.random() < spec.p_symbolic
        conv = sample_conversation(s, rng, pick_kind(SYMBOLIC_MIX if symbolic else TEXT_ONLY_MIX, rng))
        question = conv[0]["value"].replace("<image>\n", "")
        # the scene's words stand where the image stands in LLaVA's template: before the question
        conv[0]["value"] = f"{symbolic_scene(s, spec.symbolic_grid)}\n{question}" if symbolic else question
        records.append({"id": s.image_id, "conversations": conv})
    return records


def _write_images(root: Path, scenes: list[Scene], spec: WorldSpec, seed: int, progress: bool) -> None:
    for s in progress_bar(scenes, desc=f"render {scenes[0].split}", disable=not progress, unit="img"):
        io.write_bytes(root / "images" / f"{s.image_id}.png", io.png_bytes(render_scene(spec, s, seed)))


def write_world(out_dir: str | Path, spec: WorldSpec, seed: int, overwrite: bool = False,
                progress: bool = True) -> dict:
    """Generate the world into `out_dir` (built in a temp dir, renamed when complete). Returns world.json."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    return _built_then_renamed(out_dir, lambda tmp: _write_world(tmp, spec, seed, progress))


def _built_then_renamed(out_dir: Path, build) -> dict:
    """`build(tmp)` into a temp dir beside `out_dir`, which replaces `out_dir` only when complete (the old one is
    moved aside and deleted after the swap; the temp dir is removed on failure). Returns what `build` returns."""
    with io.atomic_dir(out_dir) as tmp:
        return build(tmp)


def _write_world(root: Path, spec: WorldSpec, seed: int, progress: bool) -> dict:
    logger.info("sampling scenes: %d train, %d val (seed %d)", spec.n_train, spec.n_val, seed)
    splits = {split: [sample_scene(spec, seed, split, i) for i in range(n)]
              for split, n in (("train", spec.n_train), ("val", spec.n_val))}
    text_scenes = [sample_scene(spec, seed, "text", i) for i in range(RECORDS_PER_IMAGE * spec.n_train)]
    io.write_text(root / "synonyms.txt", synonyms_text())
    io.write_jsonl(root / "scenes.jsonl", [s.to_record() for ss in splits.values() for s in ss])
    for split, scenes in splits.items():
        _write_images(root, scenes, spec, seed, progress)
        io.write_json(root / f"llava_instruct_{split}.json", _conversations(scenes, seed, RECORDS_PER_IMAGE, spec))
        instances, captions = _coco_files(scenes, spec, seed)
        io.write_json(root / "annotations" / f"instances_{split}.json", instances)
        io.write_json(root / "annotations" / f"captions_{split}.json", captions)
    io.write_json(root / "text_only.json", _text_conversations(text_scenes, seed, spec))
    pope = _write_eval_files(root, splits["val"], seed, spec.pope_images, spec.caption_images)
    summary = {
        "version": WORLD_VERSION, "seed": seed, "spec": {k: v for k, v in vars(spec).items()},
        "classes": [c.name for c in CLASSES], "contexts": {c.name: [list(p) for p in c.pairs] for c in CONTEXTS},
        "cooccurrence": cooccurrence(splits["train"]),
        "counts": {"train_images": spec.n_train, "val_images": spec.n_val,
                   "pope_questions": {k: len(v) for k, v in pope.items()}, "caption_eval": spec.caption_images},
    }
    io.write_json(root / "world.json", summary)
    summary["counts"].update(write_benchmark_editions(root, spec, seed))
    io.write_json(root / "world.json", summary)
    return summary


def _write_eval_files(root: Path, scenes: list[Scene], seed: int, pope_images: int, caption_images: int) -> dict:
    """POPE's three splits over `pope_images` of `scenes` and the caption-evaluation prompts of the first
    `caption_images`: what `mmstudy.evaluation.evaluate`'s pope and chair read. Returns the POPE questions by split."""
    logger.info("building POPE splits from %d %s images", pope_images, scenes[0].split)
    pope = build_pope_questions({f"{s.image_id}.png": s.classes() for s in scenes}, img_num=pope_images,
                                sample_num=3, seed=seed)
    for name in POPE_SPLITS:
        io.write_jsonl(root / "pope" / f"world_pope_{name}.json", pope[name])
    io.write_jsonl(root / "caption_eval.jsonl", [
        {"image_id": s.image_id, "image": f"{s.image_id}.png", "prompt": CAPTION_EVAL_PROMPT,
         "gt_objects": sorted(s.classes())} for s in scenes[:caption_images]])
    return pope


def write_selection_split(world_dir: str | Path, out_dir: str | Path, n_images: int = 500,
                          progress: bool = True) -> dict:
    """A data directory laid out like a world for `evaluate`'s pope and chair, built from `n_images` new scenes
    of the world's spec and seed (split "select"): what a recipe is chosen on, so that nothing is chosen on the
    benchmark items the report scores. Built in a temp dir, renamed when complete; an existing `out_dir` made
    from the same world and size is kept. Returns its world.json."""
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    info = load_world_info(world_dir)
    wanted = {"version": info["version"], "seed": info["seed"], "spec": info["spec"], "images": n_images}
    if (out_dir / "world.json").is_file():
        found = io.read_json(out_dir / "world.json")
        held = {k: found.get(k) for k in ("version", "seed", "spec")} | {
            "images": (found.get("selection") or {}).get("images")}
        if held == wanted:
            return found
        differ = "; ".join(f"{k}: {held[k]!r} there, {wanted[k]!r} asked" for k in wanted if held[k] != wanted[k])
        raise FileExistsError(f"{out_dir} holds a selection split of another world or size ({differ}); remove it")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists, is not empty and holds no selection split: pick another path")
    if n_images < 10:
        raise ValueError(f"a selection split needs at least 10 images, got {n_images}")
    spec, seed = WorldSpec(**info["spec"]), info["seed"]
    scenes = [sample_scene(spec, seed, SELECTION_SPLIT, i) for i in range(n_images)]
    eligible = sum(len(set(s.classes())) >= 3 for s in scenes)   # POPE asks 3 present objects per image
    if not eligible:
        raise ValueError(f"none of the {n_images} selection images has 3 distinct objects for POPE: use more images")

    def build(tmp: Path) -> dict:
        io.write_text(tmp / "synonyms.txt", synonyms_text())
        io.write_jsonl(tmp / "scenes.jsonl", [s.to_record() for s in scenes])
        _write_images(tmp, scenes, spec, seed, progress)
        instances, captions = _coco_files(scenes, spec, seed)   # named _val: the files evaluate's chair reads
        io.write_json(tmp / "annotations" / "instances_val.json", instances)
        io.write_json(tmp / "annotations" / "captions_val.json", captions)
        pope = _write_eval_files(tmp, scenes, seed, min(spec.pope_images, eligible), n_images)
        summary = {**info, "selection": {"images": n_images},
                   "counts": {"select_images": n_images, "caption_eval": n_images,
                              "pope_questions": {k: len(v) for k, v in pope.items()}}}
        io.write_json(tmp / "world.json", summary)
        return summary

    return _built_then_renamed(out_dir, build)
