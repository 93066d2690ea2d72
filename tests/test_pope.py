"""Unit tests for mmstudy.benchmarks.pope: parsing, metrics, question files and the construction procedure.

Run: pytest tests/test_pope.py
"""

import json

import pytest

from mmstudy.benchmarks import pope
from mmstudy.io import DataError

# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes.", "yes"),
        ("No, there is not.", "no"),
        ("There is a dog.", "yes"),  # no negation token: counts as yes
        ("not sure", "no"),  # "not" anywhere in the first sentence
        ("", "yes"),  # unparseable -> yes (reference bias)
        ("NO", "yes"),  # only "No", "no", "not" count
        ("Not sure", "yes"),  # "Not" is not in the reference's set
        ("Yes. No.", "yes"),  # only the text before the first "." is read
        ("Yes, but no", "no"),
        ("No,there is", "yes"),  # "," is deleted, not split on: the token is "Nothere"
        ("No\nthere is none", "yes"),  # split on single spaces: the token is "No\nthere"
    ],
)
def test_parse_yes_no_reference(text, expected):
    assert pope.parse_yes_no(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes.", "yes"),
        ("No, there is not.", "no"),
        ("There is a dog.", None),
        ("", None),
        ("   YES! it is", "yes"),
        ("no", "no"),
        ("not sure", None),
        ("Yesterday", None),
    ],
)
def test_parse_yes_no_strict(text, expected):
    assert pope.parse_yes_no_strict(text) == expected


# ---------------------------------------------------------------- metrics

# 8 predictions, by hand: labels 4 yes / 4 no.
#   yes-labels: preds yes, yes, yes, no  -> TP=3, FN=1
#   no-labels : preds yes, yes, no,  no  -> FP=2, TN=2
# accuracy = (3+2)/8 = 0.625; precision = 3/(3+2) = 0.6; recall = 3/(3+1) = 0.75;
# f1 = 2*0.6*0.75/(0.6+0.75) = 0.9/1.35 = 2/3; yes_ratio = 5/8 = 0.625 (predictions); label_yes_ratio = 0.5.
LABELS_8 = ["yes", "yes", "yes", "yes", "no", "no", "no", "no"]
PREDS_8 = ["yes", "yes", "yes", "no", "yes", "yes", "no", "no"]


def test_pope_metrics_golden():
    m = pope.pope_metrics(PREDS_8, LABELS_8)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"]) == (3, 2, 2, 1, 8)
    assert m["accuracy"] == pytest.approx(0.625)
    assert m["precision"] == pytest.approx(0.6)
    assert m["recall"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(0.625)
    assert m["label_yes_ratio"] == pytest.approx(0.5)
    assert m["n_invalid"] == 0


def test_pope_metrics_empty_is_all_zeros():
    m = pope.pope_metrics([], [])
    assert m["n"] == 0
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio", "label_yes_ratio"):
        assert m[key] == 0.0


def test_pope_metrics_degenerate_predictions_do_not_divide_by_zero():
    all_no = pope.pope_metrics(["no"] * 4, ["yes", "no", "yes", "no"])
    assert (all_no["precision"], all_no["recall"], all_no["f1"], all_no["yes_ratio"]) == (0.0, 0.0, 0.0, 0.0)
    assert all_no["accuracy"] == pytest.approx(0.5)
    all_yes_on_no_labels = pope.pope_metrics(["yes"] * 3, ["no"] * 3)
    assert all_yes_on_no_labels["recall"] == 0.0 and all_yes_on_no_labels["yes_ratio"] == 1.0


def test_pope_metrics_validates_inputs():
    with pytest.raises(ValueError, match="label 1"):
        pope.pope_metrics(["yes", "no"], ["yes", "Yes"])
    with pytest.raises(ValueError, match="prediction 0"):
        pope.pope_metrics(["maybe"], ["yes"])
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        pope.pope_metrics(["yes", "no"], ["yes"])


def _questions(labels):
    return [
        {"question_id": i, "image": "x.jpg", "text": "Is there a dog in the image?", "label": lab}
        for i, lab in enumerate(labels)
    ]


def test_score_pope_reference_vs_strict():
    answers = ["Yes.", "I think so", "No.", "maybe"]
    questions = _questions(["yes", "no", "no", "yes"])
    # reference: yes, yes, no, yes -> TP=2 (0, 3), FP=1 (1), TN=1 (2); accuracy 3/4, yes_ratio 3/4
    ref = pope.score_pope(answers, questions)
    assert (ref["tp"], ref["fp"], ref["tn"], ref["fn"]) == (2, 1, 1, 0)
    assert ref["accuracy"] == pytest.approx(0.75) and ref["yes_ratio"] == pytest.approx(0.75)
    assert ref["parser"] == "reference" and ref["version"] == pope.POPE_VERSION
    # strict: yes, None, no, None -> TP=1, TN=1, 2 invalid; accuracy 2/4, precision 1/1, recall 1/2 (yes labels)
    strict = pope.score_pope(answers, questions, parser="strict")
    assert (strict["tp"], strict["fp"], strict["tn"], strict["fn"], strict["n_invalid"]) == (1, 0, 1, 0, 2)
    assert strict["accuracy"] == pytest.approx(0.5)
    assert strict["precision"] == pytest.approx(1.0)
    assert strict["recall"] == pytest.approx(0.5)
    assert strict["yes_ratio"] == pytest.approx(0.25)


def test_score_pope_rejects_unknown_parser_and_misaligned_input():
    with pytest.raises(ValueError, match="unknown POPE parser"):
        pope.score_pope(["Yes"], _questions(["yes"]), parser="lenient")
    with pytest.raises(ValueError, match="2 answers but 1 questions"):
        pope.score_pope(["Yes", "No"], _questions(["yes"]))


def test_macro_average():
    splits = {
        "random": {"accuracy": 0.9, "f1": 0.8, "precision": 1.0, "recall": 0.6, "yes_ratio": 0.3},
        "adversarial": {"accuracy": 0.7, "f1": 0.6, "precision": 0.5, "recall": 0.8, "yes_ratio": 0.7},
    }
    m = pope.macro_average(splits)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["f1"] == pytest.approx(0.7)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.7)
    assert m["yes_ratio"] == pytest.approx(0.5)
    assert m["n_splits"] == 2 and m["splits"] == ["adversarial", "random"]
    assert pope.macro_average({})["f1"] == 0.0


# ---------------------------------------------------------------- question files


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_load_pope_questions_reads_released_format(tmp_path):
    rec = {
        "question_id": 0,
        "image": "COCO_val2014_000000548882.jpg",
        "image_id": 548882,
        "text": "Is there a dining table in the image?",
        "label": "yes",
    }
    path = _write_lines(
        tmp_path / "coco_pope_random.json", [json.dumps(rec), json.dumps({**rec, "question_id": 1, "label": "no"})]
    )
    records = pope.load_pope_questions(path)
    assert [r["label"] for r in records] == ["yes", "no"]
    assert records[0]["image_id"] == 548882  # extra fields are kept


def test_load_pope_questions_names_file_line_and_field(tmp_path):
    good = {"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"}
    bad = {**good, "question_id": 2, "label": "Yes"}
    path = _write_lines(tmp_path / "q.jsonl", [json.dumps(good), "", json.dumps(bad)])  # blank line 2
    with pytest.raises(DataError, match=r"q\.jsonl, line 3, field 'label'"):
        pope.load_pope_questions(path)


def test_load_pope_questions_rejects_missing_field_and_duplicate_id(tmp_path):
    good = {"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"}
    missing = _write_lines(tmp_path / "m.jsonl", [json.dumps({k: v for k, v in good.items() if k != "image"})])
    with pytest.raises(DataError, match=r"m\.jsonl, line 1.*'image'"):
        pope.load_pope_questions(missing)
    dup = _write_lines(tmp_path / "d.jsonl", [json.dumps(good), json.dumps(good)])
    with pytest.raises(DataError, match=r"line 2, field 'question_id': duplicate id 1"):
        pope.load_pope_questions(dup)


# ---------------------------------------------------------------- construction

# Hand-made world. Object counts over the 5 eligible images: dog 4, frisbee 3, person 2, car 2, others 1.
IMAGES = {
    "i1.jpg": ["dog", "frisbee", "bench"],
    "i2.jpg": ["dog", "frisbee", "person"],
    "i3.jpg": ["dog", "frisbee", "kite"],
    "i4.jpg": ["dog", "person", "car"],
    "i5.jpg": ["car", "bus", "bird"],
    "i6.jpg": ["cup", "fork"],  # only 2 objects: never eligible with sample_num=3
}


def _by_image(questions):
    out = {}
    for q in questions:
        out.setdefault(q["image"], []).append(q)
    return out


def _object(q):
    return q["text"].removeprefix("Is there a ").removeprefix("n ").removesuffix(" in the image?")


def test_build_pope_questions_structure():
    splits = pope.build_pope_questions(IMAGES, img_num=5, sample_num=3, seed=0)
    assert list(splits) == ["random", "popular", "adversarial"]
    for name, questions in splits.items():
        assert len(questions) == 30, name
        assert [q["question_id"] for q in questions] == list(range(1, 31))
        assert sum(q["label"] == "yes" for q in questions) == 15
        per_image = _by_image(questions)
        assert set(per_image) == {"i1.jpg", "i2.jpg", "i3.jpg", "i4.jpg", "i5.jpg"}
        for image, qs in per_image.items():
            assert [q["label"] for q in qs] == ["yes", "no"] * 3
            assert [_object(q) for q in qs[0::2]] == IMAGES[image]  # first 3 objects, in order
            negatives = [_object(q) for q in qs[1::2]]
            assert not set(negatives) & set(IMAGES[image]), (name, image, negatives)
            assert len(set(negatives)) == 3


def test_build_pope_questions_popular_and_adversarial_negatives():
    splits = pope.build_pope_questions(IMAGES, img_num=5, sample_num=3, seed=0)
    # popular for i5 (car, bus, bird): most frequent objects not in the image: dog (4), frisbee (3), then
    # person (2) since its tie partner car (2) is in the image.
    i5 = _by_image(splits["popular"])["i5.jpg"]
    assert [_object(q) for q in i5[1::2]] == ["dog", "frisbee", "person"]
    # adversarial for i1 (dog, frisbee, bench):
    #   dog co-occurs with frisbee 3, person 2, bench/kite/car 1 -> first allowed: person
    #   frisbee co-occurs with dog 3, bench/person/kite 1 -> bench in image, person asked -> kite
    #   bench co-occurs only with dog, frisbee (both in image) -> exhausted -> random among car, bus, bird
    i1 = [_object(q) for q in _by_image(splits["adversarial"])["i1.jpg"][1::2]]
    assert i1[:2] == ["person", "kite"]
    assert i1[2] in {"car", "bus", "bird"}


def test_build_pope_questions_is_deterministic_per_seed():
    first = pope.build_pope_questions(IMAGES, img_num=4, seed=7)
    assert pope.build_pope_questions(IMAGES, img_num=4, seed=7) == first
    others = [pope.build_pope_questions(IMAGES, img_num=4, seed=s) for s in range(1, 6)]
    assert any(o != first for o in others)


def test_build_pope_questions_needs_enough_images():
    with pytest.raises(ValueError, match="only 5 of 6 images"):
        pope.build_pope_questions(IMAGES, img_num=6, sample_num=3)


def test_build_pope_questions_first_id_and_duplicates():
    images = {
        "a.jpg": ["dog", "dog", "cat", "car"],
        "b.jpg": ["cat", "bus", "car", "kite"],
        "c.jpg": ["bird", "cat", "dog", "horse"],
    }
    splits = pope.build_pope_questions(images, img_num=3, seed=1, first_question_id=0)
    a = [_object(q) for q in _by_image(splits["random"])["a.jpg"]][0::2]
    assert a == ["dog", "cat", "car"]  # the repeated "dog" is asked once
    assert splits["random"][0]["question_id"] == 0


@pytest.mark.parametrize(
    "obj, expected",
    [
        ("apple", "Is there an apple in the image?"),
        ("umbrella", "Is there an umbrella in the image?"),
        ("oven", "Is there an oven in the image?"),
        ("dog", "Is there a dog in the image?"),
        ("hair drier", "Is there a hair drier in the image?"),
    ],
)
def test_question_text_article(obj, expected):
    assert pope.question_text(obj) == expected


def test_answers_at_a_yes_ratio_move_the_threshold_by_hand():
    margins = [2.0, -1.0, 0.5, 0.5, -3.0]
    assert pope.answers_at_yes_ratio(margins, 0.4) == ["yes", "no", "yes", "no", "no"]   # 2 yes: ties in order
    assert pope.answers_at_yes_ratio(margins, 0.0) == ["no"] * 5
    assert pope.answers_at_yes_ratio(margins, 1) == ["yes"] * 5
    labels = ["yes", "no", "no", "yes", "no"]
    m = pope.yes_ratio_matched(margins, labels, 0.6)       # yes at 0, 2, 3: TP 2, FP 1, TN 2, FN 0
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["yes_ratio"]) == (2, 1, 2, 0, 0.6) and m["accuracy"] == 0.8
    with pytest.raises(ValueError, match="yes_ratio"):
        pope.answers_at_yes_ratio(margins, 1.5)
