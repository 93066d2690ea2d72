"""The whole benchmark suite on the smoke model: runners, registry, intervals, judges, CLI, comparison."""

import json

import numpy as np
import pytest

from mmstudy import io
from mmstudy.benchmarks.pope import load_coco_objects
from mmstudy.benchmarks.registry import REGISTRY
from mmstudy.cli import main
from mmstudy.evaluation.compare import compare_runs
from mmstudy.evaluation.evaluate import evaluate, summary_table
from mmstudy.judges.base import JudgeReply, OracleJudge, new_stats
from mmstudy.world.layout import load_scenes

ALL = tuple(REGISTRY)


@pytest.fixture(scope="module")
def suite(smoke_model, smoke_world):
    model, processor, _ = smoke_model
    return evaluate(model, processor, smoke_world, ALL, judge=OracleJudge(), limit=6, progress=False)


def test_every_headline_metric_has_an_interval(suite):
    metrics, samples = suite
    for spec in REGISTRY.values():
        assert metrics[f"{spec.name}/version"] == spec.version
        for key in spec.headline:
            assert key in metrics, key
            assert f"{key}_ci95_low" in metrics and f"{key}_ci95_high" in metrics, key
            v, lo, hi = metrics[key], metrics[f"{key}_ci95_low"], metrics[f"{key}_ci95_high"]
            if not np.isnan(v) and key != "amber/amber_score" and not key.startswith("amber/"):
                assert lo - 1e-9 <= v <= hi + 1e-9, key
    table = summary_table(metrics)
    assert "mmhal_v/score" in table and "[" in table
    assert {s["benchmark"] for s in samples} == set(ALL) - {"headroom"}   # probes: metrics, no answers


def test_judged_samples_keep_the_verdicts(suite):
    metrics, samples = suite
    mmhal = [s for s in samples if s["benchmark"] == "mmhal"]
    assert len(mmhal) == 6 and all("Rating:" in s["judge_text"] for s in mmhal)
    assert metrics["mmhal/score"] == pytest.approx(np.mean([s["rating"] for s in mmhal]))
    assert metrics["mmhal/judge_failures"] == 0 and metrics["mmhal/judge"].startswith("oracle")
    llava = [s for s in samples if s["benchmark"] == "llava_w"]
    assert all(s["scores"][0] == 10.0 for s in llava)   # the oracle's reference scores itself perfectly


def test_yes_no_answers_stop_at_the_first_period(suite):
    _, samples = suite
    pope = [s["answer"] for s in samples if s["benchmark"] == "pope"]
    assert all(a.count(".") <= 1 for a in pope)


class FlakyJudge:
    """Fails every other request: failures must be counted, never scored."""

    name = "flaky"

    def __init__(self):
        self.stats, self.inner = new_stats(), OracleJudge()

    def complete(self, requests):
        replies = self.inner.complete(requests)
        return [r if i % 2 else JudgeReply(None, error="boom") for i, r in enumerate(replies)]


def test_judge_failures_are_counted_not_scored(smoke_model, smoke_world):
    model, processor, _ = smoke_model
    metrics, samples = evaluate(model, processor, smoke_world, ("mmhal",), judge=FlakyJudge(), limit=6,
                                progress=False)
    assert metrics["mmhal/judge_failures"] == 3 and metrics["mmhal/n_failed"] == 3
    assert metrics["mmhal/n_scored"] == 3 and metrics["mmhal/reference/n_scored"] == 3
    assert sum(s["judge_error"] == "boom" for s in samples) == 3


def test_judged_benchmarks_need_a_judge_before_generating(smoke_model, smoke_world):
    model, processor, _ = smoke_model
    with pytest.raises(ValueError, match="mmhal_v needs a judge"):
        evaluate(model, processor, smoke_world, ("pope", "mmhal_v"), progress=False)


def test_objhal_judge_extractor_through_the_oracle(smoke_model, smoke_world):
    model, processor, _ = smoke_model
    rule, _ = evaluate(model, processor, smoke_world, ("objhal",), limit=6, progress=False)
    judged, samples = evaluate(model, processor, smoke_world, ("objhal",), judge=OracleJudge(), limit=6,
                               objhal_extractor="judge", progress=False)
    assert judged["objhal/extractor"] == "judge" and judged["objhal/n_extraction_failed"] == 0
    # an error-free oracle lists exactly the words the rules find, so both extractors agree
    for key in ("objhal/object_hallucination", "objhal/recall_coco"):
        assert judged[key] == pytest.approx(rule[key])


def test_eval_cli_writes_results_samples_and_a_table(smoke_model, smoke_world, tmp_path, capsys):
    from mmstudy.models.llava import save_llava

    model, processor, _ = smoke_model
    save_llava(model, processor, tmp_path / "m")
    out = tmp_path / "run" / "results.json"
    rc = main(["-q", "eval", "--model", str(tmp_path / "m"), "--data", str(smoke_world), "--benchmarks",
               "mmhal,llava_w,amber", "--judge", "oracle:0.1", "--limit", "4", "--out", str(out)])
    assert rc == 0
    results = io.read_json(out)
    assert results["manifest"]["params"]["judge"] == "oracle:0.1"
    assert "llava_w/relative_score" in results["metrics"]
    assert len(io.read_jsonl(out.with_name("samples.jsonl"))) == 4 + 4 + 8
    assert "amber/amber_score" in capsys.readouterr().out
    rc = main(["-q", "eval", "--model", str(tmp_path / "m"), "--data", str(smoke_world), "--benchmarks", "mmhal",
               "--judge", "gpt4", "--out", str(out)])
    assert rc == 2


def test_compare_covers_every_benchmark_of_a_real_run(suite):
    _, samples = suite
    result = compare_runs(samples, samples, n_boot=50)
    paired = {key.split("/")[0] for key in result}
    assert paired == set(REGISTRY) - {"masked", "headroom"}
    assert all(r["diff"] == 0 for r in result.values())


def test_compare_runs_pairs_items(tmp_path, capsys):
    a = [{"benchmark": "pope", "split": "random", "question_id": i, "pred": "yes", "label": "yes" if i % 2 else "no"}
         for i in range(40)]
    b = [dict(s, pred=s["label"]) for s in a]                                  # B answers everything right
    result = compare_runs(a, b)
    assert result["pope/accuracy"]["a"] == 0.5 and result["pope/accuracy"]["b"] == 1.0
    assert result["pope/accuracy"]["low"] > 0 and result["pope/accuracy"]["n"] == 40
    io.write_jsonl(tmp_path / "a.jsonl", a)
    io.write_jsonl(tmp_path / "b.jsonl", b[:30])                               # unpaired items are left out
    assert main(["-q", "compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]) == 0
    assert "pope/random/accuracy" in capsys.readouterr().out
    io.write_jsonl(tmp_path / "c.jsonl", [{"benchmark": "masked", "image_id": "x"}])
    assert main(["-q", "compare", str(tmp_path / "a.jsonl"), str(tmp_path / "c.jsonl")]) == 2


def test_chair_comparison_is_a_ratio_of_sums():
    def sample(h, m):
        return {"benchmark": "chair", "image_id": m, "reference": {
            "hallucinated": [("x", "x")] * h, "mentioned": [("x", "x")] * m, "covered": [], "gt": []}}
    a = [sample(1, 1), sample(0, 3)]   # CHAIR_i = 1/4
    b = [sample(0, 1), sample(0, 3)]   # CHAIR_i = 0/4
    r = compare_runs(a, b)["chair/chair_i"]
    assert (r["a"], r["b"], r["diff"]) == (0.25, 0.0, -0.25)


def test_pope_build_from_coco_annotations(smoke_world, tmp_path):
    objects = load_coco_objects(smoke_world / "annotations" / "instances_val.json")
    scenes = load_scenes(smoke_world, "val")
    assert objects == {f"{s.image_id}.png": s.classes() for s in scenes}   # category order = first annotation
    rc = main(["-q", "pope-build", "--coco-annotations", str(smoke_world / "annotations" / "instances_val.json"),
               "--out", str(tmp_path), "--img-num", "10", "--first-id", "0"])
    assert rc == 0
    built = io.read_jsonl(tmp_path / "coco_pope_adversarial.json")
    assert len(built) == 60 and built[0]["question_id"] == 0
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["-q", "pope-build", "--coco-annotations", str(tmp_path / "bad.json"), "--out", str(tmp_path)]) == 2


def test_score_cli_for_the_new_benchmarks(smoke_world, tmp_path, capsys):
    # AMBER: the world's own truth as responses scores perfectly on the generative part
    annotations = io.read_json(smoke_world / "amber" / "annotations.json")
    responses = [{"id": a["id"], "response": " ".join(f"There is a {t}." for t in a["truth"])
                  if a["type"] == "generative" else a["truth"].capitalize()} for a in annotations]
    io.write_json(tmp_path / "amber.json", responses)
    assert main(["-q", "score", "amber", "--responses", str(tmp_path / "amber.json"), "--data",
                 str(smoke_world / "amber")]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["chair"] == 0.0 and m["hal"] == 0.0 and m["accuracy"] >= 99.9
    # MMHal: the standard answers, rated by the oracle with the world's ground truth
    items = io.read_json(smoke_world / "mmhal" / "response_template.json")
    io.write_json(tmp_path / "mmhal.json", [dict(it, model_answer=it["gt_answer"]) for it in items])
    assert main(["-q", "score", "mmhal", "--responses", str(tmp_path / "mmhal.json"), "--judge", "oracle",
                 "--world", str(smoke_world), "--out", str(tmp_path / "m.json")]) == 0
    m = io.read_json(tmp_path / "m.json")
    assert m["mmhal/hallucination_rate"] == 0.0 and m["mmhal/score"] >= 5 and m["mmhal/reference/n"] == len(items)
    # Object HalBench: answers in RLAIF-V's format (image_id taken from the question file by line)
    questions = io.read_jsonl(smoke_world / "objhal" / "obj_halbench_300_with_image.jsonl")
    io.write_jsonl(tmp_path / "objhal.jsonl", [{"question_id": i, "prompt": q["question"],
                                                "text": "There is a dog and a cup."} for i, q in enumerate(questions)])
    assert main(["-q", "score", "objhal", "--answers", str(tmp_path / "objhal.jsonl"), "--questions",
                 str(smoke_world / "objhal" / "obj_halbench_300_with_image.jsonl"), "--coco-annotations",
                 str(smoke_world / "annotations"), "--synonyms", str(smoke_world / "synonyms.txt")]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["n_responses"] == len(questions) and 0 < m["object_hallucination"] <= 1


def test_pope_reads_the_release_file_names(smoke_model, smoke_world, tmp_path):
    """A data directory holding POPE as released (coco_pope_<split>.json) works like the world's files."""
    import shutil

    model, processor, _ = smoke_model
    data = tmp_path / "data"
    shutil.copytree(smoke_world / "images", data / "images")
    (data / "pope").mkdir()
    for split in ("random", "popular", "adversarial"):
        shutil.copy(smoke_world / "pope" / f"world_pope_{split}.json", data / "pope" / f"coco_pope_{split}.json")
    metrics, _ = evaluate(model, processor, data, ("pope",), limit=4, progress=False)
    assert "pope/adversarial/accuracy" in metrics
    shutil.copy(data / "pope" / "coco_pope_random.json", data / "pope" / "world_pope_random.json")
    with pytest.raises(io.DataError, match="expected one \\*_pope_random.json"):
        evaluate(model, processor, data, ("pope",), limit=4, progress=False)
