"""Judges: the world oracle's checks and verdict formats, error rate, the local LLaVA judge and make_judge."""

import json

import pytest

from mmstudy.benchmarks import mmhal
from mmstudy.judges import oracle
from mmstudy.judges.base import (
    JudgeReply,
    JudgeRequest,
    LocalLlavaJudge,
    OracleJudge,
    judge_pairs,
    parse_preference,
)
from mmstudy.judges.registry import make_judge
from mmstudy.world.scene import Scene, SceneObject

SCENE = Scene("val_000001", "val", "kitchen", [
    SceneObject("fork", 0, "small", [0, 0, 8, 8]),
    SceneObject("knife", 4, "large", [16, 16, 12, 12]),
    SceneObject("fork", 5, "large", [32, 16, 12, 12]),
], clutter=0)


@pytest.mark.parametrize("answer, gt, wrong, kinds, coverage", [
    ("There is a knife in the center.", "There is a knife in the center.", [], [], 1.0),
    ("There is a spoon in the center.", None, ["no spoon in the image"], ["object"], 1.0),
    ("There is a knife at the top left.", None, ["no knife top left"], ["attribute"], 1.0),   # wrong position
    ("There is a small knife.", None, ["no small knife"], ["attribute"], 1.0),               # wrong size
    ("There are three forks.", None, ["2 fork, not 3"], ["count"], 1.0),                      # wrong count
    ("There are two forks, one at the top left and one on the right.", None, [], [], 1.0),
    ("This is a street scene.", None, ["the scene is a kitchen, not a street"], ["other"], 1.0),
    ("Yes, there is a fork.", "No, there is no fork in the image.", ["answers 'yes' where the answer is 'no'"],
     ["existence"], 0.5),                                    # gt facts: (obj fork), (pol no): covers the first
    ("I am not sure.", "There is a knife in the center.", [], [], 0.0),
])
def test_check_answer(answer, gt, wrong, kinds, coverage):
    check = oracle.check_answer(answer, SCENE, gt)
    assert check.hallucinations == wrong and check.kinds == kinds
    assert check.coverage == pytest.approx(coverage)


@pytest.mark.parametrize("coverage, wrong, sentences, rating", [
    (1.0, [], 2, 6), (1.0, [], 1, 5), (0.8, [], 3, 5), (0.5, [], 1, 4), (0.0, [], 1, 3),
    (1.0, ["x"], 2, 2), (0.3, ["x"], 1, 1), (0.1, ["x"], 1, 0),
])
def test_mmhal_rubric(coverage, wrong, sentences, rating):
    assert oracle.mmhal_rating(oracle.Check(wrong, coverage, sentences)) == rating


def _mmhal_request(answer, key="k"):
    gt = "There is a knife in the center."
    return JudgeRequest("prompt", task="mmhal", key=key,
                        context={"answer": answer, "gt_answer": gt, "scene": SCENE.to_record()})


def test_oracle_verdicts_parse_with_the_benchmark_parsers():
    judge = OracleJudge()
    good, bad = judge.complete([_mmhal_request("There is a knife in the center."),
                                _mmhal_request("There is a cup in the center.")])
    assert mmhal.parse_rating(good.text) == 5 and mmhal.parse_rating(bad.text) == 1
    review = judge.complete([JudgeRequest("p", task="llava_w", key="r", context={
        "answer": "There is a cup.", "reference": "There is a knife in the center.", "scene": SCENE.to_record()})])
    first_line = review[0].text.splitlines()[0]
    assert first_line == "10 1"   # reference covers itself; the answer covers nothing and hallucinates a cup
    objects = judge.complete([JudgeRequest("p", task="objects", key="o",
                                           context={"answer": "Two forks and a mug near a traffic light."})])
    assert json.loads(objects[0].text) == ["fork", "mug", "traffic light"]
    assert judge.stats["requests"] == 4


def test_oracle_error_rate_is_seeded_and_roughly_right():
    requests = [_mmhal_request("There is a knife in the center.", key=str(i)) for i in range(400)]
    clean = [mmhal.parse_rating(r.text) for r in OracleJudge(0.0).complete(requests)]
    noisy = [mmhal.parse_rating(r.text) for r in OracleJudge(0.5, seed=1).complete(requests)]
    again = [mmhal.parse_rating(r.text) for r in OracleJudge(0.5, seed=1).complete(requests[::-1])][::-1]
    assert set(clean) == {5}
    assert noisy == again                       # per-request seeds: independent of order and batching
    changed = sum(a != b for a, b in zip(clean, noisy)) / len(clean)
    assert 0.35 < changed < 0.52                # 0.5 x 6/7 of random ratings differ from 5


def test_oracle_refuses_what_it_cannot_judge():
    with pytest.raises(ValueError, match="no rule for task 'ranking'"):
        OracleJudge().complete([JudgeRequest("p", task="ranking")])
    with pytest.raises(ValueError, match="needs world ground truth"):
        OracleJudge().complete([JudgeRequest("p", task="mmhal", key="k", context={"answer": "a", "gt_answer": "b",
                                                                                  "scene": None})])


def test_make_judge_specs(tmp_path):
    assert make_judge("oracle").error_rate == 0.0
    assert make_judge("oracle:0.25").error_rate == 0.25
    http = make_judge("http:http://127.0.0.1:9/v1#llava-v1.6-34b", cache_dir=tmp_path)
    assert http.name == "http:http://127.0.0.1:9/v1#llava-v1.6-34b" and http.model == "llava-v1.6-34b"
    for bad in ("oracle:2", "gpt4", "local:", "http:"):
        with pytest.raises(ValueError):
            make_judge(bad)


def test_local_llava_judge(smoke_model, smoke_world, tmp_path):
    from mmstudy.models.llava import save_llava

    model, processor, _ = smoke_model
    save_llava(model, processor, tmp_path / "judge")
    judge = make_judge(f"local:{tmp_path / 'judge'}")
    assert isinstance(judge, LocalLlavaJudge)
    image = str(next((smoke_world / "images").glob("val_*.png")))
    replies = judge.complete([
        JudgeRequest("is there a fork in the image ?", image=image, max_tokens=8),
        JudgeRequest("describe the image .", max_tokens=8),                       # text only
        JudgeRequest(mmhal.judge_prompt({"image_content": [], "question": "q", "gt_answer": "a"}, "b"),
                     max_tokens=8),                                              # longer than the tiny context
    ])
    assert isinstance(replies[0].text, str) and isinstance(replies[1].text, str)
    assert replies[2].text is None and "exceeds the judge's context" in replies[2].error
    assert judge.stats["failures"] == 1 and judge.stats["requests"] == 3


def test_nothing_claimed_where_an_object_is():
    assert oracle.check_answer("There is nothing in the center.", SCENE).hallucinations == [
        "there is a knife center, not nothing"]
    assert oracle.check_answer("There is nothing at the bottom.", SCENE).hallucinations == []


@pytest.mark.parametrize("text, expected", [
    ("Response 2 is better because Response 1 mentions a cup.", 1),
    ("I prefer response 1.", 0),
    ("Both are fine.", None),
    (None, None),
])
def test_parse_preference(text, expected):
    assert parse_preference(text) == expected


def test_judge_pairs_randomizes_order_and_maps_back():
    grounded, hallucinated = "There is a knife in the center.", "There is a cup in the center."
    pairs = [{"key": i, "question": "What is in the center?", "a": hallucinated, "b": grounded,
              "context": {"scene": SCENE.to_record(), "gt_answer": grounded}} for i in range(200)]
    judge = OracleJudge()
    assert judge_pairs(judge, pairs, seed=3) == [1] * 200                      # always the grounded one
    shown = [r.context["responses"][0] == grounded for r in _captured_requests(pairs, seed=3)]
    assert 0.35 < sum(shown) / len(shown) < 0.65                              # shown first about half the time
    noisy = judge_pairs(OracleJudge(0.3, seed=1), pairs, seed=3)
    assert 0.2 < noisy.count(0) / len(noisy) < 0.4                            # a weaker annotator errs ~30 %


def _captured_requests(pairs, seed):
    class Capture:
        name, stats = "capture", {}

        def complete(self, requests):
            self.requests = list(requests)
            return [JudgeReply("Response 1") for _ in requests]
    capture = Capture()
    judge_pairs(capture, pairs, seed=seed)
    return capture.requests
