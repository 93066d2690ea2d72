"""`mmstudy score`: scoring existing answers files (real formats, hand-worked numbers, clear errors).

Run: pytest tests/test_score.py
"""

import json

import pytest

from mmstudy import io
from mmstudy.cli import main
from mmstudy.evaluation.files import score_chair_file, score_pope_file

QUESTIONS = [  # released POPE format
    {"question_id": 0, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
     "label": "yes"},
    {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a dining table in the image?",
     "label": "no"},
    {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a person in the image?",
     "label": "yes"},
    {"question_id": 3, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a bench in the image?",
     "label": "no"},
]
# LLaVA's model_vqa_loader output: one object per line with question_id and text (plus fields we ignore)
ANSWERS = [
    {"question_id": 0, "prompt": "...", "text": "Yes, there is a snowboard.", "model_id": "x"},
    {"question_id": 1, "prompt": "...", "text": "No.", "model_id": "x"},
    {"question_id": 2, "prompt": "...", "text": "There is not a person.", "model_id": "x"},   # parsed "no": FN
    {"question_id": 3, "prompt": "...", "text": "I see a bench", "model_id": "x"},             # parsed "yes": FP
]


@pytest.fixture()
def pope_files(tmp_path):
    q, a = tmp_path / "coco_pope_random.json", tmp_path / "answers.jsonl"
    io.write_jsonl(q, QUESTIONS)
    io.write_jsonl(a, ANSWERS)
    return q, a


def test_score_pope_by_hand(pope_files):
    m = score_pope_file(*pope_files)
    # TP=1 (q0), TN=1 (q1), FN=1 (q2), FP=1 (q3)
    assert (m["tp"], m["tn"], m["fn"], m["fp"]) == (1, 1, 1, 1)
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["yes_ratio"] == 0.5
    assert m["accuracy_ci"]["low"] <= 0.5 <= m["accuracy_ci"]["high"] and m["accuracy_ci"]["n"] == 4


def test_score_pope_cli_prints_json(pope_files, capsys):
    q, a = pope_files
    assert main(["score", "pope", "--questions", str(q), "--answers", str(a)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 0.5


def test_score_pope_errors_name_the_file(pope_files):
    q, a = pope_files
    io.write_jsonl(a, ANSWERS[:3])
    with pytest.raises(io.DataError, match=r"answers.jsonl: no answer for 1 question_id.*\[3\]"):
        score_pope_file(q, a)
    a.write_text('{"question_id": 0, "text": "Yes"}\n{"question_id": 1}\n')
    with pytest.raises(io.DataError, match=r"answers.jsonl, line 2: missing field\(s\) 'text'"):
        score_pope_file(q, a)


@pytest.fixture()
def coco_dir(tmp_path):
    d = tmp_path / "annotations"
    categories = [{"id": 1, "name": "dog"}, {"id": 2, "name": "frisbee"}, {"id": 3, "name": "bus"}]
    images = [{"id": 42, "file_name": "a.jpg"}, {"id": 43, "file_name": "b.jpg"}]
    io.write_json(d / "instances_val2014.json", {"images": images, "categories": categories, "annotations": [
        {"id": 1, "image_id": 42, "category_id": 1}, {"id": 2, "image_id": 42, "category_id": 2},
        {"id": 3, "image_id": 43, "category_id": 3}]})
    io.write_json(d / "captions_val2014.json", {"images": images, "annotations": [
        {"id": 1, "image_id": 42, "caption": "A man throws a frisbee to his dog."},   # adds person via "man"
        {"id": 2, "image_id": 43, "caption": "A bus on the street."}]})
    return d


def test_score_chair_by_hand(tmp_path, coco_dir):
    captions = tmp_path / "captions.json"
    io.write_json(captions, [{"image_id": 42, "caption": "A puppy and a man play with a frisbee near a car."},
                             {"image_id": 43, "caption": "Two buses and a bus."}])
    m = score_chair_file(captions, coco_dir)
    # image 42: GT {dog, frisbee, person}; mentions dog (puppy), person (man), frisbee, car -> 1 of 4 hallucinated
    # image 43 (reference singulariser): "buses" -> bus, "bus" -> "bu" (not a word): 1 mention, none hallucinated
    assert m["n_mentions"] == 5 and m["n_hallucinated_mentions"] == 1
    assert m["chair_i"] == pytest.approx(1 / 5) and m["chair_s"] == 0.5
    assert m["recall"] == pytest.approx((3 + 1) / (3 + 1)) and m["mode"] == "reference"
    fixed = score_chair_file(captions, coco_dir, fixed=True)
    assert fixed["n_mentions"] == 6 and fixed["chair_i"] == pytest.approx(1 / 6) and fixed["mode"] == "fixed"
    assert m["chair_i_ci"]["low"] <= m["chair_i"] <= m["chair_i_ci"]["high"]


def test_score_chair_errors(tmp_path, coco_dir):
    captions = tmp_path / "captions.json"
    io.write_json(captions, [{"image_id": 42, "caption": "A dog."}, {"image_id": 7, "caption": "A cat."}])
    with pytest.raises(io.DataError, match=r"captions.json: image_id\(s\) not in the annotations .*\[7\]"):
        score_chair_file(captions, coco_dir)
    io.write_json(captions, [{"image_id": 42, "text": "A dog."}])
    with pytest.raises(io.DataError, match=r"captions.json, record 0: missing field\(s\) 'caption'"):
        score_chair_file(captions, coco_dir)
    io.write_json(captions, [{"image_id": 42, "caption": "A dog."}])
    with pytest.raises(io.DataError, match="no instances_"):
        score_chair_file(captions, tmp_path)


def test_score_chair_cli_on_the_world(tmp_path, smoke_world):
    captions = tmp_path / "captions.json"
    coco = json.loads((smoke_world / "annotations" / "instances_val.json").read_text())
    first = coco["images"][0]["id"]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    present = sorted({names[a["category_id"]] for a in coco["annotations"] if a["image_id"] == first})
    io.write_json(captions, [{"image_id": first, "caption": f"There is a {present[0]} at the top."}])
    out = tmp_path / "chair.json"
    assert main(["score", "chair", "--captions", str(captions), "--coco-annotations", str(smoke_world / "annotations"),
                 "--synonyms", str(smoke_world / "synonyms.txt"), "--fixed", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["chair_i"] == 0.0 and m["n_mentions"] == 1 and m["recall"] == pytest.approx(1 / len(present))
