"""The synthetic world: ground truth, co-occurrence prior, rendering, text formats, determinism.

Run: pytest tests/test_world.py
"""

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from mmstudy import io
from mmstudy.benchmarks import chair, pope
from mmstudy.data.llava import load_llava_instruct
from mmstudy.world.files import write_world
from mmstudy.world.layout import load_scenes
from mmstudy.world.scene import (
    CLASSES,
    CONTEXTS,
    POSITIONS,
    Scene,
    SceneObject,
    WorldSpec,
    pair_partners,
    render_scene,
    sample_scene,
)
from mmstudy.world.text import (
    describe,
    is_well_formed,
    sample_conversation,
    split_sentences,
    symbolic_scene,
    synonyms_text,
)

COCO_SYNONYMS = Path(__file__).resolve().parents[1] / "mmstudy" / "resources" / "coco_chair_synonyms.txt"


def test_world_has_enough_classes_contexts_and_distinct_glyphs():
    assert len(CLASSES) >= 24 and len(CONTEXTS) >= 4
    glyphs = [(c.shape, c.colour, c.texture) for c in CLASSES]
    assert len(set(glyphs)) == len(glyphs), "every class has its own glyph"
    assert len({c.name for c in CLASSES}) == len(CLASSES)
    assert len({c.background for c in CONTEXTS}) == len(CONTEXTS), "each context has its own visual cue"


def test_pairs_cooccur_strongly_and_contexts_condition_frequencies():
    spec = WorldSpec()
    scenes = [sample_scene(spec, 0, "train", i) for i in range(3000)]
    partners = pair_partners()
    for anchor in ("fork", "car", "dog", "keyboard"):
        with_anchor = [s for s in scenes if anchor in s.classes()]
        p = np.mean([partners[anchor] in s.classes() for s in with_anchor])
        base = np.mean([partners[anchor] in s.classes() for s in scenes])
        assert p > 0.6 and p > 3 * base, (anchor, p, base)
    kitchen = Counter(n for s in scenes if s.context == "kitchen" for n in s.classes())
    street = Counter(n for s in scenes if s.context == "street" for n in s.classes())
    assert kitchen["fork"] > 20 * max(1, street["fork"])


def test_scene_ground_truth_is_consistent():
    spec = WorldSpec()
    for i in range(200):
        s = sample_scene(spec, 3, "val", i)
        cells = [o.cell for o in s.objects]
        assert len(cells) == len(set(cells)) and cells == sorted(cells)
        for o in s.objects:
            x, y, w, h = o.bbox
            cx, cy = x + w / 2, y + h / 2
            assert (int(cy // spec.cell) * 3 + int(cx // spec.cell)) == o.cell, "box centre lies in its cell"
            assert o.position in POSITIONS and o.size in ("small", "large")


def test_rendering_is_deterministic_and_shows_objects():
    spec = WorldSpec(noise_std=0.0, max_clutter=0, p_faint=0.0, p_occluded=0.0)
    scene = sample_scene(spec, 0, "train", 5)
    a, b = render_scene(spec, scene, seed=0), render_scene(spec, scene, seed=0)
    assert a.size == (48, 48) and np.array_equal(np.asarray(a), np.asarray(b))
    arr = np.asarray(a).astype(float)
    empty = [c for c in range(9) if c not in {o.cell for o in scene.objects}]
    for o in scene.objects:
        x, y, w, h = (int(round(v)) for v in o.bbox)
        centre = arr[y + h // 2 - 1:y + h // 2 + 2, x + w // 2 - 1:x + w // 2 + 2].mean(axis=(0, 1))
        assert np.abs(centre - np.array(CONTEXTS[[c.name for c in CONTEXTS].index(scene.context)].background)).max() \
            > 25 or o.name in ("spoon", "bicycle"), f"{o.name} is not visible at its box centre"
    assert empty, "the scene leaves some cells empty"


def test_descriptions_name_every_object_and_parse_with_the_grammar(tmp_path):
    spec = WorldSpec()
    (tmp_path / "synonyms.txt").write_text(synonyms_text())
    syn = chair.load_synonyms(tmp_path / "synonyms.txt", protect_vocabulary=True)
    for i in range(300):
        s = sample_scene(spec, 1, "train", i)
        text = describe(s, np.random.default_rng(i))
        assert all(is_well_formed(x) for x in split_sentences(text)), text
        assert {c for _, c in chair.extract_objects(text, syn)} == set(s.classes()), text
    for bad in ("there is one object there is one object top objects left.", "at the at the fork.",
                "there is a fork fork at the top."):
        assert not is_well_formed(bad)


def test_prior_driven_errors_of_the_instruction_data(tmp_path):
    from mmstudy.world.text import CONTEXT_OBJECTS, absent_partners, sample_existence_qa

    spec = WorldSpec()
    (tmp_path / "synonyms.txt").write_text(synonyms_text())
    syn = chair.load_synonyms(tmp_path / "synonyms.txt", protect_vocabulary=True)
    drifted, yes_to_partner, partner_questions = 0, 0, 0
    for i in range(400):
        s = sample_scene(spec, 1, "train", i)
        assert describe(s, np.random.default_rng(i), drift=0.0) == describe(s, np.random.default_rng(i))
        text = describe(s, np.random.default_rng(i), drift=1.0)
        assert all(is_well_formed(x) for x in split_sentences(text)), text
        extra = {c for _, c in chair.extract_objects(text, syn)} - set(s.classes())
        assert len(extra) <= 1, text
        if absent_partners(s):
            assert extra <= set(absent_partners(s)), text           # an absent partner of a present object first
        else:
            assert extra <= CONTEXT_OBJECTS[s.context], text       # else an absent object of the scene's context
        drifted += bool(extra)
        for k in range(5):
            q, a = sample_existence_qa(s, np.random.default_rng((i, k)), prior_yes=0.5)
            asked = next(c.name for c in sorted(CLASSES, key=lambda c: -len(c.name)) if f" {c.name} " in q)
            if asked in absent_partners(s):
                partner_questions += 1
                yes_to_partner += a.startswith("Yes")
            elif asked not in s.classes():
                assert a.startswith("No"), (q, a)                                 # other absent objects: exact
    assert drifted > 300 and 0.4 < yes_to_partner / partner_questions < 0.6


def test_conversations_are_llava_shaped():
    s = sample_scene(WorldSpec(), 0, "train", 0)
    rng = np.random.default_rng(0)
    for kind in ("describe", "exist", "qa"):
        conv = sample_conversation(s, rng, kind)
        assert conv[0]["value"].startswith("<image>\n")
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
    with pytest.raises(ValueError, match="unknown conversation kind"):
        sample_conversation(s, rng, "poem")


def test_symbolic_scene_mirrors_the_patch_layout():
    scene = Scene("x_000000", "train", "kitchen", [SceneObject("traffic light", 0, "small", [0, 0, 4, 4]),
                                                   SceneObject("fork", 8, "large", [36, 36, 10, 10])])
    words = symbolic_scene(scene, grid=6).split()
    assert len(words) == 36
    assert [words[i] for i in (0, 1, 6, 7)] == ["traffic"] * 4 and words[2] == "nothing"
    assert [words[i] for i in (28, 29, 34, 35)] == ["fork"] * 4 and words.count("nothing") == 28
    assert symbolic_scene(scene, grid=3).split() == ["traffic"] + ["nothing"] * 7 + ["fork"]


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path, smoke_world):
    again = tmp_path / "again"
    write_world(again, WorldSpec.for_profile("smoke"), seed=0, progress=False)
    assert _digest(again) == _digest(smoke_world)
    other = tmp_path / "other"
    write_world(other, WorldSpec.for_profile("smoke"), seed=1, progress=False)
    assert _digest(other)["scenes.jsonl"] != _digest(smoke_world)["scenes.jsonl"]


def test_world_files_are_in_the_real_formats(smoke_world):
    records = load_llava_instruct(smoke_world / "llava_instruct_train.json", image_dir=smoke_world / "images")
    assert len(records) == 2 * 300 and all("image" in r for r in records)
    text_only = load_llava_instruct(smoke_world / "text_only.json")
    assert all("image" not in r for r in text_only)
    words = {"nothing"} | {c.name.split()[0] for c in CLASSES}
    symbolic = [r["conversations"][0]["value"].split("\n")[0].split() for r in text_only
                if "\n" in r["conversations"][0]["value"]]
    assert all(len(s) == 36 and set(s) <= words for s in symbolic), "scene words before the question, 6x6"
    assert 0.6 < len(symbolic) / len(text_only) < 0.8, "about p_symbolic = 0.7 of the text states its scene"
    for split in ("random", "popular", "adversarial"):
        qs = pope.load_pope_questions(smoke_world / "pope" / f"world_pope_{split}.json")
        assert len(qs) == 6 * 20 and sum(q["label"] == "yes" for q in qs) == 60
        assert all((smoke_world / "images" / q["image"]).is_file() for q in qs)
    scenes = {f"{s.image_id}.png": set(s.classes()) for s in load_scenes(smoke_world, "val")}
    for q in pope.load_pope_questions(smoke_world / "pope" / "world_pope_adversarial.json"):
        obj = re.fullmatch(r"Is there an? (.+) in the image\?", q["text"]).group(1)
        assert (obj in scenes[q["image"]]) == (q["label"] == "yes"), q
    coco = COCO(str(smoke_world / "annotations" / "instances_val.json"))
    assert len(coco.getImgIds()) == 60 and len(coco.getCatIds()) == len(CLASSES)
    n_objects = sum(len(s.objects) for s in load_scenes(smoke_world, "val"))
    assert len(coco.getAnnIds()) == n_objects
    caps = COCO(str(smoke_world / "annotations" / "captions_val.json"))
    assert len(caps.getAnnIds()) == 5 * 60
    evals = io.read_jsonl(smoke_world / "caption_eval.jsonl", required=("image", "gt_objects", "prompt"))
    assert len(evals) == 30
    info = json.loads((smoke_world / "world.json").read_text())
    assert info["counts"]["train_images"] == 300 and "p_given" in info["cooccurrence"]


def test_synonym_file_has_the_coco_format_and_chair_reads_it(smoke_world):
    coco_lines = COCO_SYNONYMS.read_text().splitlines()
    world_lines = (smoke_world / "synonyms.txt").read_text().splitlines()
    assert len(world_lines) == len(CLASSES)
    shape = lambda line: all(w and w == w.strip() for w in line.split(", "))  # noqa: E731
    assert all(shape(line) for line in world_lines)
    assert sum(shape(line) for line in coco_lines) >= 75  # 4 COCO lines carry stray spaces
    syn = chair.load_synonyms(smoke_world / "synonyms.txt", protect_vocabulary=True)
    text = ("There are two buses. I can see a puppy, an automobile and two mice. "
            "A traffic light is near the stop sign. There are two knives.")
    assert [c for _, c in chair.extract_objects(text, syn)] == [
        "bus", "dog", "car", "mouse", "traffic light", "stop sign", "knife"]


def test_scenes_reader_names_file_and_record(tmp_path, smoke_world):
    bad = tmp_path / "w"
    bad.mkdir()
    lines = (smoke_world / "scenes.jsonl").read_text().splitlines()
    record = json.loads(lines[2])
    record["objects"][0]["name"] = "unicorn"
    lines[2] = json.dumps(record)
    (bad / "scenes.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(io.DataError, match=r"scenes.jsonl, record 3 .*unicorn"):
        load_scenes(bad)
    (bad / "scenes.jsonl").write_text(lines[0] + "\n{not json\n")
    with pytest.raises(io.DataError, match=r"scenes.jsonl, line 2: malformed JSON"):
        load_scenes(bad)


def test_write_world_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "w"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        write_world(out, WorldSpec.for_profile("smoke"), seed=0, progress=False)
    assert (out / "keep.txt").read_text() == "precious"

    import mmstudy.world.files as wf

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(wf, "render_scene", boom)
    with pytest.raises(RuntimeError):
        write_world(out, WorldSpec.for_profile("smoke"), seed=0, overwrite=True, progress=False)
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"], "no temp directory left behind"


def test_overwrite_keeps_the_old_world_until_the_new_one_is_complete(tmp_path, monkeypatch):
    import mmstudy.world.files as wf

    out = tmp_path / "w"
    out.mkdir()
    (out / "keep.txt").write_text("old world")
    render, seen = wf.render_scene, []

    def watched(*a, **k):
        seen.append((out / "keep.txt").is_file())
        return render(*a, **k)

    monkeypatch.setattr(wf, "render_scene", watched)
    write_world(out, WorldSpec.for_profile("smoke"), seed=0, overwrite=True, progress=False)
    assert seen and all(seen)                          # the old world stood while the new one was built
    assert (out / "world.json").is_file() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]
    assert out.stat().st_mode & 0o777 == io.default_mode(directory=True)


def test_spec_validation():
    with pytest.raises(ValueError, match="multiple of 3"):
        WorldSpec(image_size=50)
    with pytest.raises(ValueError, match="unknown world profile"):
        WorldSpec.for_profile("huge")
    with pytest.raises(ValueError, match="p_both"):
        WorldSpec(p_both=0.8, p_anchor_only=0.3)
