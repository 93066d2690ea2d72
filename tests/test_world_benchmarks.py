"""World editions of MMHal, LLaVA-Bench, AMBER and Object HalBench: real formats, exact ground truth."""

import json

from mmstudy import io
from mmstudy.benchmarks import amber, llava_bench, mmhal, objhal
from mmstudy.cli import main
from mmstudy.judges.base import JudgeRequest, OracleJudge
from mmstudy.world.benchmarks import write_benchmark_editions
from mmstudy.world.layout import load_scenes
from mmstudy.world.scene import WorldSpec


def test_editions_load_with_the_release_loaders(smoke_world):
    spec = WorldSpec.for_profile("smoke")
    items = mmhal.load_mmhal(smoke_world / "mmhal" / "response_template.json")
    assert len(items) == 4 * spec.judged_images
    assert [it["question_type"] for it in items[:8]] == list(mmhal.QUESTION_TYPES)   # the release's order
    questions = llava_bench.load_questions(smoke_world / "llava_bench" / "questions.jsonl")
    contexts = llava_bench.load_context(smoke_world / "llava_bench" / "context.jsonl")
    answers = llava_bench.load_answers(smoke_world / "llava_bench" / "answers_gpt4.jsonl")
    assert len(contexts) == spec.judged_images and len(questions) == len(answers) == spec.judged_images * 5 // 2
    assert {q["category"] for q in questions} == set(llava_bench.CATEGORIES)
    oq = objhal.load_questions(smoke_world / "objhal" / "obj_halbench_300_with_image.jsonl")
    assert len(oq) == spec.objhal_images
    assert objhal.question_image(oq[0]).size == (spec.image_size, spec.image_size)   # embedded base64 PNG
    annotations = amber.load_amber_annotations(smoke_world / "amber" / "annotations.json")
    association = amber.load_association(smoke_world / "amber" / "relation.json")
    amber.check_annotation_objects(annotations, association)
    queries = amber.load_amber_queries(smoke_world / "amber" / "query_all.json")
    assert [q["id"] for q in queries] == [a["id"] for a in annotations]
    assert sum(a["type"] == "generative" for a in annotations) == spec.amber_images


def test_ground_truth_is_exact(smoke_world):
    scenes = {f"{s.image_id}.png": s for s in load_scenes(smoke_world, "val")}
    for it in mmhal.load_mmhal(smoke_world / "mmhal" / "response_template.json"):
        scene = scenes[mmhal.image_file(it)]
        assert [c.lower() for c in it["image_content"]] == scene.classes()
        if it["question_type"] == "adversarial":   # presupposes an absent object
            absent = it["gt_answer"].split("no ")[1].split(" in the")[0]
            assert absent not in scene.classes()
    annotations = json.loads((smoke_world / "amber" / "annotations.json").read_text())
    queries = json.loads((smoke_world / "amber" / "query_all.json").read_text())
    for a, q in zip(annotations, queries):
        scene = scenes[q["image"]]
        if a["type"] == "generative":
            assert a["truth"] == scene.classes() and not set(a["hallu"]) & set(scene.classes())
        elif a["type"] == "discriminative-attribute-number" and a["truth"] == "yes" and q["query"].startswith("Are"):
            noun = q["query"].split()[3]
            assert sum(o.name in noun for o in scene.objects) >= 2


def test_oracle_gives_the_standard_answers_top_marks(smoke_world):
    """The oracle judge, fed the ground truth as the answer, never finds a hallucination in it."""
    scenes = {f"{s.image_id}.png": s.to_record() for s in load_scenes(smoke_world, "val")}
    items = mmhal.load_mmhal(smoke_world / "mmhal" / "response_template.json")
    requests = [JudgeRequest("p", task="mmhal", key=str(i), context={
        "answer": it["gt_answer"], "gt_answer": it["gt_answer"], "scene": scenes[mmhal.image_file(it)]})
        for i, it in enumerate(items)]
    ratings = [mmhal.parse_rating(r.text) for r in OracleJudge().complete(requests)]
    assert min(ratings) >= 5, ratings
    questions = llava_bench.load_questions(smoke_world / "llava_bench" / "questions.jsonl")
    answers = llava_bench.load_answers(smoke_world / "llava_bench" / "answers_gpt4.jsonl")
    reviews = OracleJudge().complete([JudgeRequest("p", task="llava_w", key=str(q["question_id"]), context={
        "answer": answers[q["question_id"]]["text"], "reference": answers[q["question_id"]]["text"],
        "scene": scenes[q["image"]]}) for q in questions])
    assert {llava_bench.parse_review(r.text) for r in reviews} == {(10.0, 10.0)}


def test_editions_are_deterministic(smoke_world, tmp_path):
    before = {p.name: p.read_bytes() for p in (smoke_world / "amber").iterdir()}
    before["mmhal"] = (smoke_world / "mmhal" / "response_template.json").read_bytes()
    counts = write_benchmark_editions(smoke_world)
    assert main(["-q", "world", "--out", str(smoke_world), "--benchmarks-only"]) == 0   # the same through the CLI
    after = {p.name: p.read_bytes() for p in (smoke_world / "amber").iterdir()}
    after["mmhal"] = (smoke_world / "mmhal" / "response_template.json").read_bytes()
    assert before == after
    assert counts == {k: v for k, v in io.read_json(smoke_world / "world.json")["counts"].items() if k in counts}
